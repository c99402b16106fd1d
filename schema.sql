-- central's database. Re-runnable: every statement is CREATE ... IF NOT EXISTS.
-- Schema changes after version 1 are migrations in central/storage/sqlite/base.py keyed by
-- PRAGMA user_version; this file always describes the newest schema.
-- Times are Unix seconds (REAL). JSON columns hold compact JSON text.

CREATE TABLE IF NOT EXISTS servers (
    id                    INTEGER PRIMARY KEY,
    name                  TEXT    NOT NULL UNIQUE,
    kind                  TEXT    NOT NULL DEFAULT 'ssh' CHECK (kind IN ('ssh', 'local')),
    host                  TEXT    NOT NULL,
    port                  INTEGER NOT NULL DEFAULT 22,
    user                  TEXT    NOT NULL DEFAULT 'central', -- the central's login user on the host
    key_path              TEXT,                          -- NULL: the central's own key
    agent_port            INTEGER NOT NULL DEFAULT 8083,
    tags                  TEXT    NOT NULL DEFAULT '[]', -- JSON array of strings
    interval_s            REAL,                          -- NULL: poll.interval
    host_key              TEXT,                          -- pinned key, OpenSSH public key line
    host_key_fingerprint  TEXT,                          -- SHA256:...
    status                TEXT    NOT NULL DEFAULT 'unknown'
                                  CHECK (status IN ('unknown', 'online', 'offline', 'error')),
    status_reason         TEXT,   -- a failure reason, one of central.model.REASONS
    last_error            TEXT,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    last_seen             REAL,   -- last successful poll
    last_poll             REAL,   -- last attempt
    poll_duration         REAL,   -- seconds the last poll took
    agent_version         TEXT,
    agent_sha256          TEXT,
    hostname              TEXT,   -- as the agent reports it
    inventory_hash        TEXT,
    created_at            REAL    NOT NULL,
    -- the bastion it is reached through (a server itself); NULL: directly. A bastion with hosts
    -- behind it cannot be removed (RESTRICT) before they are moved.
    via                   INTEGER REFERENCES servers(id) ON DELETE RESTRICT
);

-- The newest full /api/all document per server, overwritten on each poll.
CREATE TABLE IF NOT EXISTS latest (
    server_id  INTEGER PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
    ts         REAL NOT NULL,
    doc        TEXT NOT NULL
);

-- Raw samples: the key figures (central.model.METRICS; storage adds the columns of a newly
-- added one to an older database by itself) as columns plus a compact top-5 process list
-- ([[pid, name, cpu_percent, rss], ...]) to tell later which process caused a spike.
CREATE TABLE IF NOT EXISTS samples (
    server_id   INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    ts          REAL    NOT NULL,
    cpu         REAL,
    mem         REAL,
    swap        REAL,
    load1       REAL,
    load5       REAL,
    load15      REAL,
    disk        REAL,   -- fullest filesystem, percent
    net_rx      REAL,   -- bytes/s, all interfaces
    net_tx      REAL,
    disk_read   REAL,   -- bytes/s
    disk_write  REAL,
    procs       INTEGER,
    top         TEXT,
    PRIMARY KEY (server_id, ts)
) WITHOUT ROWID;

-- Rollups of samples: tier 60 (1-minute) and tier 3600 (1-hour) buckets, min/avg/max.
CREATE TABLE IF NOT EXISTS rollups (
    server_id  INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    tier       INTEGER NOT NULL,
    ts         REAL    NOT NULL,   -- bucket start
    n          INTEGER NOT NULL,   -- samples in the bucket
    cpu_min REAL, cpu_avg REAL, cpu_max REAL,
    mem_min REAL, mem_avg REAL, mem_max REAL,
    swap_min REAL, swap_avg REAL, swap_max REAL,
    load1_min REAL, load1_avg REAL, load1_max REAL,
    load5_min REAL, load5_avg REAL, load5_max REAL,
    load15_min REAL, load15_avg REAL, load15_max REAL,
    disk_min REAL, disk_avg REAL, disk_max REAL,
    net_rx_min REAL, net_rx_avg REAL, net_rx_max REAL,
    net_tx_min REAL, net_tx_avg REAL, net_tx_max REAL,
    disk_read_min REAL, disk_read_avg REAL, disk_read_max REAL,
    disk_write_min REAL, disk_write_avg REAL, disk_write_max REAL,
    procs_min REAL, procs_avg REAL, procs_max REAL,
    PRIMARY KEY (server_id, tier, ts)
) WITHOUT ROWID;

-- Per-container figures (central.model.CONTAINER_METRICS), one row per running container and
-- poll, at most central.model.MAX_STORED_CONTAINERS (50) containers per server and poll
-- (running first, then by name): retention and rollup tiers as samples, in the same passes.
CREATE TABLE IF NOT EXISTS container_samples (
    server_id   INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    ts          REAL    NOT NULL,
    cpu         REAL,      -- percent of one core
    mem         REAL,      -- percent of its limit
    mem_used    INTEGER,   -- bytes
    net_rx      REAL,      -- bytes/s
    net_tx      REAL,
    disk_read   REAL,      -- bytes/s
    disk_write  REAL,
    pids        INTEGER,
    PRIMARY KEY (server_id, name, ts)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS container_rollups (
    server_id  INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    tier       INTEGER NOT NULL,
    ts         REAL    NOT NULL,   -- bucket start
    n          INTEGER NOT NULL,
    cpu_min REAL, cpu_avg REAL, cpu_max REAL,
    mem_min REAL, mem_avg REAL, mem_max REAL,
    mem_used_min REAL, mem_used_avg REAL, mem_used_max REAL,
    net_rx_min REAL, net_rx_avg REAL, net_rx_max REAL,
    net_tx_min REAL, net_tx_avg REAL, net_tx_max REAL,
    disk_read_min REAL, disk_read_avg REAL, disk_read_max REAL,
    disk_write_min REAL, disk_write_avg REAL, disk_write_max REAL,
    pids_min REAL, pids_avg REAL, pids_max REAL,
    PRIMARY KEY (server_id, name, tier, ts)
) WITHOUT ROWID;

-- How far each tier has been rolled up, so a restart neither skips nor repeats a bucket.
CREATE TABLE IF NOT EXISTS rollup_progress (
    tier      INTEGER PRIMARY KEY,
    done_until REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS inventory_latest (
    server_id  INTEGER PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
    ts         REAL NOT NULL,
    hash       TEXT NOT NULL,
    doc        TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS inventory_history (
    id              INTEGER PRIMARY KEY,
    server_id       INTEGER NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    ts              REAL    NOT NULL,
    change_type     TEXT    NOT NULL
                    CHECK (change_type IN ('initial', 'hardware_change', 'network_change', 'os_change', 'other_change')),
    change_summary  TEXT    NOT NULL,
    hash            TEXT    NOT NULL,
    doc             TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS inventory_history_server ON inventory_history (server_id, ts);

-- Alerts: one open row per (rule, server, label); closed rows are the history.
CREATE TABLE IF NOT EXISTS alerts (
    id               INTEGER PRIMARY KEY,
    rule             TEXT    NOT NULL,
    server_id        INTEGER REFERENCES servers(id) ON DELETE CASCADE,
    label            TEXT    NOT NULL DEFAULT '',
    severity         TEXT    NOT NULL DEFAULT 'warning',
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    summary          TEXT    NOT NULL DEFAULT '',
    value            REAL,
    started_at       REAL    NOT NULL,
    fired_at         REAL,
    last_evaluated   REAL    NOT NULL,
    cleared_at       REAL,   -- condition stopped holding (keep_firing_for counts from here)
    resolved_at      REAL,
    acked_by         TEXT,
    acked_at         REAL,
    last_notified    REAL,
    details          TEXT    NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open ON alerts (rule, server_id, label)
    WHERE state IN ('pending', 'firing');
CREATE INDEX IF NOT EXISTS alerts_server ON alerts (server_id, started_at);

CREATE TABLE IF NOT EXISTS silences (
    id          INTEGER PRIMARY KEY,
    matcher     TEXT NOT NULL,   -- JSON {"server": ..., "rule": ..., "tag": ...}
    starts_at   REAL NOT NULL,
    ends_at     REAL NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    created_by  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    kind        TEXT NOT NULL DEFAULT 'silence' CHECK (kind IN ('silence', 'maintenance'))
);

CREATE TABLE IF NOT EXISTS notifications (
    id          INTEGER PRIMARY KEY,
    alert_id    INTEGER REFERENCES alerts(id) ON DELETE CASCADE,
    channel     TEXT NOT NULL,
    event       TEXT NOT NULL,   -- firing, resolved, repeat
    ts          REAL NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 1,
    ok          INTEGER NOT NULL,
    detail      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS notifications_alert ON notifications (alert_id, ts);
CREATE INDEX IF NOT EXISTS notifications_channel ON notifications (channel, ts);

-- Every remote action request and its outcome, refusals and failures included.
CREATE TABLE IF NOT EXISTS audit (
    id           INTEGER PRIMARY KEY,
    ts           REAL    NOT NULL,
    actor        TEXT    NOT NULL,   -- cli:<unix user>, or the logged-in user of the API
    role         TEXT    NOT NULL DEFAULT '',
    server_id    INTEGER REFERENCES servers(id) ON DELETE SET NULL,
    server_name  TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    arguments    TEXT    NOT NULL,   -- JSON
    result       TEXT    NOT NULL,   -- ok, failed, refused, invalid, error
    exit_status  INTEGER,
    output       TEXT    NOT NULL DEFAULT '',
    duration_ms  REAL
);
CREATE INDEX IF NOT EXISTS audit_server ON audit (server_name, id);

CREATE TABLE IF NOT EXISTS users (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    role           TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash  TEXT NOT NULL,
    created_at     REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS api_tokens (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    token_hash   TEXT    NOT NULL UNIQUE,
    created_at   REAL    NOT NULL,
    last_used    REAL,
    revoked_at   REAL
);

-- The secret each server's agent authenticates with (docs/agent-protocol.md): 64 lowercase
-- hex digits, the content of the host's /etc/central-agent/secret. Read only to sign requests
-- to the agent; never logged, never in the API, the page or --json output.
CREATE TABLE IF NOT EXISTS agent_secrets (
    server_id   INTEGER PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
    secret      TEXT NOT NULL,
    updated_at  REAL NOT NULL
);

-- Secrets handed over for a host that is not a server yet (scripts/deploy-agent.sh runs before
-- `central server add`): add moves the one for its host and SSH port into agent_secrets.
CREATE TABLE IF NOT EXISTS pending_agent_secrets (
    host        TEXT    NOT NULL,
    port        INTEGER NOT NULL,
    secret      TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    PRIMARY KEY (host, port)
);

-- Page logins. The cookie carries a random session id; only its SHA-256 is stored, so the
-- database alone cannot be used to log in. Logging out deletes the row; a password change
-- deletes the user's rows; removing the user cascades. An expired row is worth nothing.
CREATE TABLE IF NOT EXISTS sessions (
    id           INTEGER PRIMARY KEY,
    id_hash      TEXT    NOT NULL UNIQUE,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at   REAL    NOT NULL,
    expires_at   REAL    NOT NULL,
    address      TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id);

-- Rights an admin grants a user on top of the role (central.model.RIGHTS); admins too.
CREATE TABLE IF NOT EXISTS user_rights (
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,   -- the right, e.g. terminal
    granted_by  TEXT    NOT NULL,
    granted_at  REAL    NOT NULL,
    PRIMARY KEY (user_id, name)
) WITHOUT ROWID;

-- The host account a server's web terminal logs in as (with the terminal key); no row:
-- the terminal is not enabled on that server.
CREATE TABLE IF NOT EXISTS terminal_accounts (
    server_id  INTEGER PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
    account    TEXT NOT NULL,
    set_by     TEXT NOT NULL,
    set_at     REAL NOT NULL
);

-- Every web terminal session; its recording is an asciicast v2 file in the recordings
-- directory. ended_at NULL: still open (or the central stopped before it could say).
CREATE TABLE IF NOT EXISTS terminal_sessions (
    id               INTEGER PRIMARY KEY,
    user_id          INTEGER REFERENCES users(id) ON DELETE SET NULL,
    user             TEXT    NOT NULL,
    server_id        INTEGER REFERENCES servers(id) ON DELETE SET NULL,
    server_name      TEXT    NOT NULL,
    account          TEXT    NOT NULL,
    address          TEXT    NOT NULL DEFAULT '',
    started_at       REAL    NOT NULL,
    ended_at         REAL,
    exit_status      INTEGER,
    end_reason       TEXT,   -- exit, closed, ended, idle, max_duration, recording_limit, failed, shutdown, interrupted
    ended_by         TEXT,
    message          TEXT    NOT NULL DEFAULT '',
    cols             INTEGER NOT NULL,
    rows             INTEGER NOT NULL,
    recording        TEXT    NOT NULL,   -- file name in the recordings directory
    recording_bytes  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS terminal_sessions_started ON terminal_sessions (started_at);

CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- Several centrals on one database (central.cluster): each live member's heartbeat, and the
-- lease of each server held by the one member that polls it.
CREATE TABLE IF NOT EXISTS members (
    member        TEXT PRIMARY KEY,
    address       TEXT NOT NULL DEFAULT '',
    started_at    REAL NOT NULL,
    heartbeat_at  REAL NOT NULL,
    lag           REAL            -- its poller's lag at that heartbeat, seconds
);

CREATE TABLE IF NOT EXISTS leases (
    server_id   INTEGER PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
    member      TEXT NOT NULL,
    expires_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_member ON leases (member);
