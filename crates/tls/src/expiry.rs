//! When a certificate expires: the `notAfter` of an X.509 certificate, read
//! with a minimal DER walk (no X.509 library needed for one field).

/// One DER element: (tag, contents, the bytes after it).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0_usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The certificate's `notAfter`, in seconds since the Unix epoch; `None` when
/// the DER is not a certificate this walk understands.
pub fn not_after(der: &[u8]) -> Option<u64> {
    validity(der).map(|(_, not_after)| not_after)
}

/// The certificate's `notBefore` and `notAfter`, in seconds since the Unix
/// epoch (an ACME client renews at two thirds of the span); `None` when the
/// DER is not a certificate this walk understands.
pub fn validity(der: &[u8]) -> Option<(u64, u64)> {
    let (_, rest) = serial_and_rest(der)?;
    let (SEQUENCE, _, rest) = element(rest)? else {
        return None;
    }; // signature
    let (SEQUENCE, _, rest) = element(rest)? else {
        return None;
    }; // issuer
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let (tag, time, rest) = element(validity)?;
    let not_before = parse_time(tag, std::str::from_utf8(time).ok()?)?;
    let (tag, time, _) = element(rest)?;
    Some((
        not_before,
        parse_time(tag, std::str::from_utf8(time).ok()?)?,
    ))
}

/// The serial number (the DER value's bytes) of a certificate and the
/// fields of its `tbsCertificate` after it.
fn serial_and_rest(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (SEQUENCE, certificate, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == VERSION {
        rest = after;
    }
    let (INTEGER, serial, rest) = element(rest)? else {
        return None;
    };
    Some((serial, rest))
}

const EXTENSIONS: u8 = 0xa3;
const OCTET_STRING: u8 = 0x04;
const KEY_IDENTIFIER: u8 = 0x80;
/// 2.5.29.35, authorityKeyIdentifier.
const AUTHORITY_KEY_IDENTIFIER: &[u8] = &[0x55, 0x1d, 0x23];

/// What identifies a certificate to its CA for ACME Renewal Information
/// (RFC 9773 4.1): the `keyIdentifier` of its authority key identifier
/// extension and its serial number, each as the bytes of the DER value;
/// `None` when the certificate has no such extension or does not parse.
pub fn renewal_identifier(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (serial, mut rest) = serial_and_rest(der)?;
    // signature, issuer, validity, subject, subjectPublicKeyInfo, then
    // the optional unique identifiers and the extensions.
    while !rest.is_empty() {
        let (tag, contents, after) = element(rest)?;
        rest = after;
        if tag != EXTENSIONS {
            continue;
        }
        let (SEQUENCE, mut extensions, _) = element(contents)? else {
            return None;
        };
        while !extensions.is_empty() {
            let (SEQUENCE, extension, after) = element(extensions)? else {
                return None;
            };
            extensions = after;
            let (0x06, oid, mut fields) = element(extension)? else {
                return None;
            };
            if oid != AUTHORITY_KEY_IDENTIFIER {
                continue;
            }
            // An optional `critical` BOOLEAN before the value.
            let value = loop {
                let (tag, value, after) = element(fields)?;
                if tag == OCTET_STRING {
                    break value;
                }
                fields = after;
            };
            let (SEQUENCE, mut identifier, _) = element(value)? else {
                return None;
            };
            while !identifier.is_empty() {
                let (tag, key_id, after) = element(identifier)?;
                if tag == KEY_IDENTIFIER {
                    return Some((key_id, serial));
                }
                identifier = after;
            }
            return None;
        }
    }
    None
}

/// Whether the certificate (DER) is valid for the DNS name `name` (its
/// subject alternative names, wildcards as RFC 6125 has them).
pub fn covers(der: &[u8], name: &str) -> bool {
    let der = rustls_pki_types::CertificateDer::from(der);
    let (Ok(cert), Ok(name)) = (
        webpki::EndEntityCert::try_from(&der),
        rustls_pki_types::ServerName::try_from(name),
    ) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

fn parse_time(tag: u8, text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        UTC_TIME => {
            let yy: u64 = text.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        GENERALIZED_TIME => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<u64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let year = i64::try_from(year).ok()? - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::try_from(month).ok()?;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::try_from(day).ok()? - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_from_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["example.gov.uk".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 3, 14);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.clone().self_signed(&key).unwrap();
        // 2031-03-14T00:00:00Z
        assert_eq!(not_after(cert.der()), Some(1_931_212_800));
        // GeneralizedTime after 2049.
        params.not_after = rcgen::date_time_ymd(2055, 1, 1);
        let cert = params.clone().self_signed(&key).unwrap();
        assert_eq!(not_after(cert.der()), Some(2_682_374_400));
        params.not_before = rcgen::date_time_ymd(2031, 3, 14);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(validity(cert.der()), Some((1_931_212_800, 2_682_374_400)));
    }

    #[test]
    fn reads_the_renewal_identifier_of_an_issued_certificate() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![0xab; 20]);
        let ca = ca.self_signed(&ca_key).unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0x02, 0x03]));
        leaf.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        assert_eq!(
            renewal_identifier(leaf.der()),
            Some((&[0xab; 20][..], &[0x01, 0x02, 0x03][..]))
        );
        // No authority key identifier (self-signed): none.
        let own = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(renewal_identifier(own.der()), None);
        assert_eq!(renewal_identifier(b"junk"), None);
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x82, 0xff]), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
        assert_eq!(parse_time(UTC_TIME, "991301000000Z"), None);
    }
}
