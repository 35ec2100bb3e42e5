//! Session tickets every process of an instance (and every replica of a
//! fleet) can open: keys derived from one 32-byte secret and the current
//! rotation period, so processes that share the secret share the keys and
//! rotate them together without talking to each other.
//!
//! nginx shares its tickets between workers (the master makes the keys) and,
//! through `ssl_session_ticket_key` files, between machines, but file keys
//! never rotate by themselves. Here the file (or the instance's shared
//! memory) holds a secret, not a key: the key for period `p` is
//! HMAC-SHA256(secret, "wharf ticket key" ‖ p), so keys rotate every
//! [`ROTATION`] everywhere at once. A ticket is sealed under the current
//! period's key and opened under the current or the previous one (a client's
//! ticket lives between one and two periods), with AES-256-GCM, a random
//! nonce and the key's 16-byte name in front, as rustls's own ticketer does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hmac;

/// How long one key seals tickets; it opens them for one more period.
pub const ROTATION: Duration = Duration::from_secs(6 * 60 * 60);
const NAME_LEN: usize = 16;

/// The secret the keys derive from: 32 bytes shared by every process (and
/// replica) that must open each other's tickets.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketSecret([u8; 32]);

impl std::fmt::Debug for TicketSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketSecret([redacted])")
    }
}

impl TicketSecret {
    /// A secret from key material (a `ssl_session_ticket_key` file's bytes,
    /// at least 32 of them): its SHA-256, so any length of good randomness
    /// serves and the file itself is never used as a key.
    pub fn from_material(material: &[u8]) -> Option<Self> {
        if material.len() < 32 {
            return None;
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, material);
        let mut secret = [0_u8; 32];
        secret.copy_from_slice(digest.as_ref());
        Some(Self(secret))
    }

    /// 32 random bytes of key material, hex-encoded (for a store that holds
    /// text, such as a fleet's Redis; [`from_material`](Self::from_material)
    /// takes the text as it is).
    pub fn fresh_material() -> Option<String> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0_u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).ok()?;
        let mut text = String::with_capacity(64);
        for b in bytes {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        Some(text)
    }

    /// The secret kept in shared memory (at least 5 words, zeroed when new):
    /// the first process to ask writes a random one, every other reads it.
    /// Give every worker of an instance the same memory (the supervisor's
    /// shared segment) and they open each other's tickets, across worker
    /// replacements and binary upgrades too.
    pub fn in_shared_memory(words: &[AtomicU64]) -> Option<Self> {
        const READY: u64 = 2;
        let [state, w0, w1, w2, w3, ..] = words else {
            return None;
        };
        let secret = [w0, w1, w2, w3];
        if state
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let mut bytes = [0_u8; 32];
            aws_lc_rs::rand::fill(&mut bytes).ok()?;
            for (word, chunk) in secret.iter().zip(bytes.chunks_exact(8)) {
                let mut b = [0_u8; 8];
                b.copy_from_slice(chunk);
                word.store(u64::from_le_bytes(b), Ordering::Relaxed);
            }
            state.store(READY, Ordering::Release);
        }
        // Another process is writing it: four stores away.
        for _ in 0..100_000 {
            if state.load(Ordering::Acquire) == READY {
                let mut bytes = [0_u8; 32];
                for (word, chunk) in secret.iter().zip(bytes.chunks_exact_mut(8)) {
                    chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
                }
                return Some(Self(bytes));
            }
            std::thread::yield_now();
        }
        None
    }
}

/// One period's key and its name.
struct PeriodKey {
    period: u64,
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

/// The keys one secret gives, derived as the periods come.
struct KeyRing {
    secret: TicketSecret,
    hmac: hmac::Key,
    /// The keys derived so far for the periods in use (the one before, this
    /// one and the next, give or take one), so a handshake derives none.
    keys: std::sync::RwLock<Vec<std::sync::Arc<PeriodKey>>>,
}

/// A [`rustls::server::ProducesTickets`] whose keys every holder of the same
/// [`TicketSecret`] derives alike. Its secret can be replaced while it
/// serves ([`set_secret`](Self::set_secret)): the new one seals, and the one
/// before still opens, as nginx's first `ssl_session_ticket_key` encrypts and
/// every one decrypts.
pub(crate) struct SharedTicketer {
    /// The sealing ring first, then the previous one.
    rings: std::sync::RwLock<Vec<std::sync::Arc<KeyRing>>>,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer").finish_non_exhaustive()
    }
}

impl KeyRing {
    fn new(secret: &TicketSecret) -> Self {
        Self {
            secret: secret.clone(),
            hmac: hmac::Key::new(hmac::HMAC_SHA256, &secret.0),
            keys: std::sync::RwLock::new(Vec::new()),
        }
    }

    /// The key and its name for period `period`, derived once.
    fn key(&self, period: u64) -> Option<std::sync::Arc<PeriodKey>> {
        let read = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(key) = read.iter().find(|k| k.period == period) {
            return Some(std::sync::Arc::clone(key));
        }
        drop(read);
        let key = std::sync::Arc::new(self.derive(period)?);
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Keep the periods around this one only (two either side, so the
        // three an opening tries never push each other out).
        keys.retain(|k| k.period.abs_diff(period) <= 2);
        keys.push(std::sync::Arc::clone(&key));
        Some(key)
    }

    fn derive(&self, period: u64) -> Option<PeriodKey> {
        let derive = |label: &[u8]| {
            let mut ctx = hmac::Context::with_key(&self.hmac);
            ctx.update(label);
            ctx.update(&period.to_be_bytes());
            ctx.sign()
        };
        let key = derive(b"wharf ticket key");
        let name_tag = derive(b"wharf ticket name");
        let mut name = [0_u8; NAME_LEN];
        name.copy_from_slice(&name_tag.as_ref()[..NAME_LEN]);
        let key = UnboundKey::new(&AES_256_GCM, key.as_ref()).ok()?;
        Some(PeriodKey {
            period,
            name,
            key: LessSafeKey::new(key),
        })
    }
}

impl SharedTicketer {
    pub(crate) fn new(secret: &TicketSecret) -> Self {
        Self {
            rings: std::sync::RwLock::new(vec![std::sync::Arc::new(KeyRing::new(secret))]),
        }
    }

    /// Seals with `secret` from now on; tickets sealed with the secret it
    /// replaces still open. Whether it was a new secret.
    pub(crate) fn set_secret(&self, secret: &TicketSecret) -> bool {
        let mut rings = self
            .rings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if rings.first().is_some_and(|r| r.secret == *secret) {
            return false;
        }
        rings.retain(|r| r.secret != *secret);
        rings.insert(0, std::sync::Arc::new(KeyRing::new(secret)));
        rings.truncate(2);
        true
    }

    fn rings(&self) -> Vec<std::sync::Arc<KeyRing>> {
        self.rings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn seal(&self, period: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let ring = self.rings().into_iter().next()?;
        let key = ring.key(period)?;
        let mut nonce = [0_u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut sealed = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        sealed.extend_from_slice(&key.name);
        sealed.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut body,
            )
            .ok()?;
        sealed.extend_from_slice(&body);
        Some(sealed)
    }

    fn open(&self, period: u64, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NAME_LEN + NONCE_LEN {
            return None;
        }
        let (name, rest) = sealed.split_at(NAME_LEN);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        // Every secret held, and the previous period's key too: a ticket
        // outlives its period.
        for ring in self.rings() {
            for candidate in [period, period.wrapping_sub(1), period.wrapping_add(1)] {
                let key = ring.key(candidate)?;
                if key.name != name {
                    continue;
                }
                let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
                let mut body = body.to_vec();
                let plain = key
                    .key
                    .open_in_place(nonce, Aad::from(name), &mut body)
                    .ok()?;
                return Some(plain.to_vec());
            }
        }
        None
    }
}

fn period_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / ROTATION.as_secs())
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(ROTATION.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(period_now(), plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(period_now(), cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_of_one_secret_open_each_others_tickets_across_one_rotation() {
        let secret = TicketSecret::from_material(&[7_u8; 48]).unwrap();
        let (a, b) = (SharedTicketer::new(&secret), SharedTicketer::new(&secret));
        let sealed = a.seal(100, b"session state").unwrap();
        assert_eq!(b.open(100, &sealed).unwrap(), b"session state");
        assert_eq!(b.open(101, &sealed).unwrap(), b"session state");
        assert!(b.open(102, &sealed).is_none(), "two rotations later");
        let other = SharedTicketer::new(&TicketSecret::from_material(&[8_u8; 48]).unwrap());
        assert!(other.open(100, &sealed).is_none());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(b.open(100, &tampered).is_none());
        assert!(TicketSecret::from_material(&[1_u8; 31]).is_none());
        let fresh = TicketSecret::fresh_material().unwrap();
        assert_eq!(fresh.len(), 64);
        assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(fresh, TicketSecret::fresh_material().unwrap());
        assert!(TicketSecret::from_material(fresh.as_bytes()).is_some());
    }

    #[test]
    fn a_new_secret_seals_and_the_one_it_replaced_still_opens() {
        let (one, two, three) = (
            TicketSecret::from_material(&[1_u8; 32]).unwrap(),
            TicketSecret::from_material(&[2_u8; 32]).unwrap(),
            TicketSecret::from_material(&[3_u8; 32]).unwrap(),
        );
        let ticketer = SharedTicketer::new(&one);
        let old = ticketer.seal(100, b"old").unwrap();
        assert!(!ticketer.set_secret(&one), "the same secret is no change");
        assert!(ticketer.set_secret(&two));
        let new = ticketer.seal(100, b"new").unwrap();
        // Sealed under the new secret: a holder of only the old cannot open it.
        assert!(SharedTicketer::new(&one).open(100, &new).is_none());
        assert_eq!(SharedTicketer::new(&two).open(100, &new).unwrap(), b"new");
        assert_eq!(ticketer.open(100, &old).unwrap(), b"old");
        // Two changes on, the first secret is gone.
        assert!(ticketer.set_secret(&three));
        assert!(ticketer.open(100, &old).is_none());
        assert_eq!(ticketer.open(100, &new).unwrap(), b"new");
    }

    #[test]
    fn the_first_process_writes_the_shared_secret_and_the_rest_read_it() {
        let words: Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(0)).collect();
        let first = TicketSecret::in_shared_memory(&words).unwrap();
        let second = TicketSecret::in_shared_memory(&words).unwrap();
        assert_eq!(first, second);
        assert_ne!(first.0, [0_u8; 32]);
        let elsewhere: Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(0)).collect();
        assert_ne!(TicketSecret::in_shared_memory(&elsewhere).unwrap(), first);
        assert!(TicketSecret::in_shared_memory(&words[..4]).is_none());
    }
}
