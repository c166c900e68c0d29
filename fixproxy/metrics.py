"""Metric names: the contract with dashboards and alert rules (../shared/KPIS.md). Defined once,
imported everywhere; never retyped as strings elsewhere."""

PREFIX = "fixproxy_"

SECURITY_EVENTS = PREFIX + "security_events"  # counter: _total appended by prometheus-client
EVENTS_OVERFLOW = PREFIX + "events_overflow"
TIME_TO_DETECT = PREFIX + "time_to_detect_seconds"
MESSAGES = PREFIX + "messages"  # counter {session, direction, outcome}
CONNECTIONS = PREFIX + "connections"  # counter {leg, outcome}
TLS_HANDSHAKES_REFUSED = PREFIX + "tls_handshakes_refused"  # counter {source, reason}
LOGONS_REFUSED = PREFIX + "logons_refused"  # counter {source, compid, reason}
SESSIONS_ACTIVE = PREFIX + "sessions_active"  # gauge {session}
FAILOVERS = PREFIX + "failovers"  # counter {outcome, trigger}
FAILOVER_RECOVERY = PREFIX + "failover_recovery_seconds"  # histogram (MTTR)
ADMIN_OPERATIONS = PREFIX + "admin_operations"  # counter {operation, outcome}
CONFIG_RELOADS = PREFIX + "config_reloads"  # counter {outcome}
