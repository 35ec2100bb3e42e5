"""The scenarios, one module per family. Each is a part of `Harness` whose
`scenario_<id>` methods (id with `_` for `-`) return that scenario's results:

- plain: (1) status, (1b) accept, (2) landing, (10) metrics-overhead
- tls: (3) edge-tls, (4) handshakes, (4b) resume
- idle: (5) idle
- ratelimit: (6) ratelimit
- lifecycle: (7) rss, (8) ready, (9) reload
- recipient: (11) recipient, the production path (seed stack vs wharf stack)
"""
from .idle import Idle
from .lifecycle import Lifecycle
from .plain import PlainHttp
from .ratelimit import Ratelimit
from .recipient import Recipient
from .tls import EdgeTls

__all__ = ["EdgeTls", "Idle", "Lifecycle", "PlainHttp", "Ratelimit", "Recipient"]
