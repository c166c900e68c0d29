"""Metric names: the contract with dashboards and alert rules (../shared/KPIS.md). Defined once,
imported everywhere; never retyped as strings elsewhere. Counters are declared without the
``_total`` suffix (prometheus-client appends it on exposition).

Each KPI of the catalogue maps to the names below (see README, "Security KPIs").
"""

PREFIX = "fixproxy_"

# -- confidentiality ----------------------------------------------------------------------------------
UNAUTHENTICATED_ACCESS = PREFIX + "unauthenticated_access"  # counter {source, compid, reason}
TLS_HANDSHAKES_REFUSED = PREFIX + "tls_handshakes_refused"  # counter {source, reason}
LOGONS_REFUSED = PREFIX + "logons_refused"  # counter {source, compid, reason}
SOURCES_BLOCKED = PREFIX + "sources_blocked"  # gauge
ENCRYPTION_COVERAGE = PREFIX + "encryption_coverage_ratio"  # gauge {leg, unit=sessions|bytes}
LEAKAGE_EVENTS = PREFIX + "leakage_events"  # counter {session, reason}
LEAKAGE_INDEX = PREFIX + "leakage_index"  # gauge: leak-relevant refusals per minute, sliding window
ADMIN_OPERATIONS = PREFIX + "admin_operations"  # counter {operation, outcome}
ADMIN_REFUSED = PREFIX + "admin_refused"  # counter {operation}
# -- integrity ----------------------------------------------------------------------------------------
MESSAGES = PREFIX + "messages"  # counter {session, direction, outcome=received|forwarded|refused|dropped|shadowed}
CHECKSUM_FAILURES = PREFIX + "checksum_failures"  # counter {session, direction}
POISONING_ATTEMPTS = PREFIX + "poisoning_attempts"  # counter {session, direction, reason}
CONFIG_RELOADS = PREFIX + "config_reloads"  # counter {outcome=ok|refused}
MODIFIED_FORWARDS = PREFIX + "modified_forwards"  # counter {session}: a rewrite changed more than it should
AUDIT_VERIFY_FAILURES = PREFIX + "audit_verification_failures"  # counter
AUDIT_VERIFICATIONS = PREFIX + "audit_verifications"  # counter {result=ok|failed}: every verification run
# -- availability and resilience ---------------------------------------------------------------------
SESSIONS_ACTIVE = PREFIX + "sessions_active"  # gauge {session}
SESSION_UP = PREFIX + "session_up"  # gauge {session}: 1 while logged on
SESSION_CONNECTED_SECONDS = PREFIX + "session_connected_seconds"  # counter {session}
UPTIME = PREFIX + "uptime_seconds"  # gauge: since start
FAILOVERS = PREFIX + "failovers"  # counter {outcome, trigger}
FAILOVER_RECOVERY = PREFIX + "failover_recovery_seconds"  # histogram (MTTR)
PROXY_LATENCY = PREFIX + "proxy_latency_seconds"  # histogram {direction, msg_type}
ORDER_ROUND_TRIP = PREFIX + "order_round_trip_seconds"  # histogram: NewOrderSingle -> first ExecutionReport
LATENCY_ANOMALIES = PREFIX + "latency_anomalies"  # counter {session}
HOSTILE_BLOCKED_RATIO = PREFIX + "ddos_hostile_blocked_ratio"  # gauge
LEGITIMATE_DELIVERED_RATIO = PREFIX + "ddos_legitimate_delivered_ratio"  # gauge
CONNECTIONS = PREFIX + "connections"  # counter {leg, outcome}
# -- accountability and response ---------------------------------------------------------------------
AUDIT_IN_FLIGHT = PREFIX + "audit_in_flight"  # gauge {session, direction}: received - (forwarded+refused+dropped)
AUDIT_RECORDS = PREFIX + "audit_records"  # counter
AUDIT_FLUSH = PREFIX + "audit_flush_seconds"  # histogram: event-loop time of each audit flush (reads wait meanwhile)
AUDIT_SEQUENCE_GAPS = PREFIX + "audit_sequence_gaps"  # counter
ADMIN_UNLOGGED = PREFIX + "admin_unlogged"  # counter: admin operations whose audit record failed
TIME_TO_DETECT = PREFIX + "time_to_detect_seconds"  # histogram: offending bytes read -> event recorded
TIME_TO_RESPOND = PREFIX + "time_to_respond_seconds"  # histogram: offending bytes read -> containment written
CERT_EXPIRY = PREFIX + "certificate_expiry_seconds"  # gauge {cert}
CERT_AGE = PREFIX + "certificate_age_seconds"  # gauge {cert}
# -- plumbing -------------------------------------------------------------------------------------------
SECURITY_EVENTS = PREFIX + "security_events"  # counter {kind, reason, outcome, session, direction}
EVENTS_OVERFLOW = PREFIX + "events_overflow"  # counter

# Latency buckets (seconds): the proxy adds tens of microseconds; anything in ms is an anomaly.
LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)
