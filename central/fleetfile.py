"""Fleet files an operator already has: Ansible inventories (INI, YAML), OpenSSH client
configs, CSV, and known_hosts files (hashed entries and `@cert-authority` lines included).

Pure functions of a file's text (no I/O, no network): each parser returns the hosts it names
as `Entry` records, and every error says the file, the line and the host. central.fleet turns
entries into servers.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import re
from dataclasses import dataclass, field

from .model import Invalid

FORMATS = ("ansible-ini", "ansible-yaml", "ssh-config", "csv")
#: inventory variables that mean something to the import (Ansible's own, plus ours)
ANSIBLE_HOST, ANSIBLE_PORT, ANSIBLE_USER = "ansible_host", "ansible_port", "ansible_user"
CENTRAL_VIA, CENTRAL_HOST_KEY = "central_via", "central_host_key"
# Ansible's implicit groups: every host is in them, so they say nothing as a tag
_IMPLICIT_GROUPS = ("all", "ungrouped")
CSV_COLUMNS = ("name", "host", "port", "user", "tags", "host_key", "via")
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
              "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss")


class FleetFileError(Invalid):
    """A line of a fleet file that cannot be read; the message names file, line and host."""

    def __init__(self, path: str, line: int, host: str | None, message: str):
        where = f"{path}:{line}" + (f": host {host}" if host else "")
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.host = path, line, host


@dataclass(frozen=True)
class Entry:
    """One host a fleet file names."""

    name: str  # the inventory name (the server's name)
    host: str  # where it is (ansible_host, HostName; the name when not given)
    path: str
    line: int
    port: int | None = None  # None: not said (22)
    user: str | None = None  # the operator's login user (ansible_user, User), None: not said
    tags: tuple[str, ...] = ()
    host_key: str | None = None  # given per row: a public key line or a SHA256:... fingerprint
    via: str | None = None  # the name of the bastion it is reached through

    @property
    def where(self) -> str:
        """file:line, for messages."""
        return f"{self.path}:{self.line}"


# formats

def detect_format(path: str, text: str) -> str:
    """The format of a fleet file from its name, else its content."""
    lower = path.lower()
    if lower.endswith((".yml", ".yaml")):
        return "ansible-yaml"
    if lower.endswith(".csv"):
        return "csv"
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if re.match(r"(?i)(host|match|include)(\s|=)", stripped):
            return "ssh-config"
        if stripped.startswith(("all:", "---")):
            return "ansible-yaml"
        return "ansible-ini"
    return "ansible-ini"


def parse(path: str, text: str, fmt: str | None = None) -> list[Entry]:
    """The entries of a fleet file in the given (or detected) format."""
    fmt = fmt or detect_format(path, text)
    if fmt not in FORMATS:
        raise Invalid(f"unknown fleet file format {fmt!r}: one of {', '.join(FORMATS)}")
    parser = {"ansible-ini": parse_ansible_ini, "ansible-yaml": parse_ansible_yaml,
              "ssh-config": parse_ssh_config, "csv": parse_csv}[fmt]
    entries = parser(path, text)
    seen: dict[str, Entry] = {}
    for e in entries:
        if e.name in seen:
            raise FleetFileError(path, e.line, e.name, f"named twice (first on line {seen[e.name].line})")
        seen[e.name] = e
    return entries


def _port(path: str, line: int, host: str, value: object) -> int:
    try:
        port = int(str(value).strip())
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise FleetFileError(path, line, host, f"port {value!r} is not 1-65535")
    return port


def ssh_config_for(entries: list[Entry], include: str | None = None) -> str:
    """An OpenSSH client config with one Host block per entry (HostName, Port, User, ProxyJump
    to its bastion's block), then, for everything else, the operator's own config (include).
    The caller validates names, hosts and users first (they become config text)."""
    lines = ["# written by `central server ssh-config`: one Host per inventory host"]
    for e in entries:
        lines.append(f"Host {e.name}")
        lines.append(f"    HostName {e.host}")
        if e.port is not None:
            lines.append(f"    Port {e.port}")
        if e.user:
            lines.append(f"    User {e.user}")
        if e.via:
            lines.append(f"    ProxyJump {e.via}")
    if include:
        lines += ["Host *", f"    Include {include}"]
    return "\n".join(lines) + "\n"


# Ansible INI

_RANGE = re.compile(r"\[([0-9a-zA-Z]+):([0-9a-zA-Z]+)(?::([0-9]+))?\]")


def expand_range(pattern: str) -> list[str]:
    """Ansible's host ranges: web[01:03] -> web01, web02, web03; db-[a:c] -> db-a, db-b, db-c."""
    m = _RANGE.search(pattern)
    if not m:
        return [pattern]
    start, end, step = m.group(1), m.group(2), int(m.group(3) or 1)
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") else 0
        values = [str(i).zfill(width) for i in range(int(start), int(end) + 1, step)]
    elif len(start) == 1 and len(end) == 1 and start.isalpha() and end.isalpha():
        values = [chr(c) for c in range(ord(start), ord(end) + 1, step)]
    else:
        raise ValueError(f"bad range [{start}:{end}]")
    if len(values) > 10000:
        raise ValueError(f"range [{start}:{end}] names more than 10,000 hosts")
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [x for v in values for x in expand_range(head + v + tail)]


def _ini_vars(path: str, lineno: int, host: str | None, words: list[str]) -> dict:
    out = {}
    for word in words:
        if "=" not in word:
            raise FleetFileError(path, lineno, host, f"expected key=value, not {word!r}")
        k, v = word.split("=", 1)
        out[k.strip()] = v.strip().strip("'\"")
    return out


@dataclass
class _Host:
    """A host while an inventory is being read."""

    line: int
    groups: list[str] = field(default_factory=list)
    vars: dict = field(default_factory=dict)


@dataclass
class _Group:
    line: int
    vars: dict = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


def _split_ini_line(path: str, lineno: int, raw: str) -> list[str]:
    import shlex

    try:
        return shlex.split(raw, comments=True, posix=True)
    except ValueError as exc:
        raise FleetFileError(path, lineno, None, f"cannot split the line: {exc}") from None


def parse_ansible_ini(path: str, text: str) -> list[Entry]:
    """An Ansible INI inventory: [group] hosts with key=value vars, [group:vars], [group:children]."""
    hosts: dict[str, _Host] = {}
    groups: dict[str, _Group] = {}
    section, kind = "ungrouped", "hosts"
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("["):
            m = re.fullmatch(r"\[([^\]:\s]+)(?::(vars|children))?\]", stripped)
            if not m:
                raise FleetFileError(path, lineno, None, f"bad section header {stripped!r}")
            section, kind = m.group(1), m.group(2) or "hosts"
            groups.setdefault(section, _Group(lineno))
            continue
        words = _split_ini_line(path, lineno, stripped)
        if not words:
            continue
        group = groups.setdefault(section, _Group(lineno))
        if kind == "vars":
            group.vars.update(_ini_vars(path, lineno, None, words))
        elif kind == "children":
            group.children.append(words[0])
            groups.setdefault(words[0], _Group(lineno))
        else:
            pattern, host_vars = words[0], _ini_vars(path, lineno, words[0], words[1:])
            m = re.fullmatch(r"(.+?):(\d+)", pattern)
            if m and not pattern.startswith("["):  # "host:port" shorthand
                pattern, host_vars = m.group(1), {ANSIBLE_PORT: m.group(2), **host_vars}
            try:
                names = expand_range(pattern)
            except ValueError as exc:
                raise FleetFileError(path, lineno, pattern, str(exc)) from None
            for name in names:
                h = hosts.setdefault(name, _Host(lineno))
                if section not in h.groups:
                    h.groups.append(section)
                h.vars.update(host_vars)
    return _resolve(path, hosts, groups)


def _resolve(path: str, hosts: dict[str, _Host], groups: dict[str, _Group]) -> list[Entry]:
    """Entries with the groups a host is in, directly or through children, as tags; a host's
    own vars win over its groups', a child group's over its parents'."""
    parents: dict[str, list[str]] = {}
    for name, g in groups.items():
        for child in g.children:
            parents.setdefault(child, []).append(name)

    def ancestry(group: str, seen: tuple = ()) -> list[str]:
        """The group and its ancestors, nearest first (a cycle is cut)."""
        out = [group]
        for p in parents.get(group, ()):
            if p not in seen and p != group:
                out += [a for a in ancestry(p, seen + (group,)) if a not in out]
        return out

    entries = []
    for name, h in hosts.items():
        chain: list[str] = []
        for g in h.groups:
            chain += [a for a in ancestry(g) if a not in chain]
        merged: dict = {}
        for g in reversed(chain + ["all"]):  # farthest first, so the nearest group wins
            merged.update(groups.get(g, _Group(0)).vars)
        merged.update(h.vars)
        tags = tuple(g for g in chain if g not in _IMPLICIT_GROUPS)
        entries.append(_entry_from_vars(path, h.line, name, merged, tags))
    return entries


def _entry_from_vars(path: str, line: int, name: str, v: dict, tags: tuple[str, ...]) -> Entry:
    port = v.get(ANSIBLE_PORT, v.get("ansible_ssh_port"))
    user = v.get(ANSIBLE_USER, v.get("ansible_ssh_user"))
    host = v.get(ANSIBLE_HOST, v.get("ansible_ssh_host")) or name
    return Entry(name=name, host=str(host), path=path, line=line,
                 port=_port(path, line, name, port) if port not in (None, "") else None,
                 user=str(user) if user not in (None, "") else None, tags=tags,
                 host_key=str(v[CENTRAL_HOST_KEY]) if v.get(CENTRAL_HOST_KEY) else None,
                 via=str(v[CENTRAL_VIA]) if v.get(CENTRAL_VIA) else None)


# Ansible YAML

def parse_ansible_yaml(path: str, text: str) -> list[Entry]:
    """An Ansible YAML inventory: groups with hosts, vars and children, from `all:` down."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise FleetFileError(path, mark.line + 1 if mark else 0, None,
                             f"not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    hosts: dict[str, _Host] = {}
    groups: dict[str, _Group] = {}
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        raise FleetFileError(path, root.start_mark.line + 1, None, "expected a mapping of groups (all: ...)")

    def scalars(node, what: str, host: str | None = None) -> dict:
        if node is None or (isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null")):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise FleetFileError(path, node.start_mark.line + 1, host, f"{what} must be a mapping")
        out = {}
        for k, v in node.value:
            if isinstance(v, yaml.ScalarNode):
                out[k.value] = v.value
        return out

    def group(name: str, node, line: int) -> None:
        g = groups.setdefault(name, _Group(line))
        if node is None or (isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null")):
            return
        if not isinstance(node, yaml.MappingNode):
            raise FleetFileError(path, node.start_mark.line + 1, None, f"group {name} must be a mapping")
        for k, v in node.value:
            if k.value == "hosts":
                if isinstance(v, yaml.ScalarNode) and v.value in ("", "~", "null"):
                    continue
                if not isinstance(v, yaml.MappingNode):
                    raise FleetFileError(path, v.start_mark.line + 1, None, f"hosts of group {name} must be a mapping")
                for hk, hv in v.value:
                    try:
                        names = expand_range(hk.value)
                    except ValueError as exc:
                        raise FleetFileError(path, hk.start_mark.line + 1, hk.value, str(exc)) from None
                    host_vars = scalars(hv, "host vars", hk.value)
                    for hname in names:
                        h = hosts.setdefault(hname, _Host(hk.start_mark.line + 1))
                        if name not in h.groups:
                            h.groups.append(name)
                        h.vars.update(host_vars)
            elif k.value == "vars":
                g.vars.update(scalars(v, f"vars of group {name}"))
            elif k.value == "children":
                if isinstance(v, yaml.ScalarNode) and v.value in ("", "~", "null"):
                    continue
                if not isinstance(v, yaml.MappingNode):
                    raise FleetFileError(path, v.start_mark.line + 1, None, f"children of group {name} must be a mapping")
                for ck, cv in v.value:
                    g.children.append(ck.value)
                    group(ck.value, cv, ck.start_mark.line + 1)
            else:
                raise FleetFileError(path, k.start_mark.line + 1, None,
                                     f"group {name}: unknown key {k.value!r} (hosts, vars or children)")

    for k, v in root.value:
        group(k.value, v, k.start_mark.line + 1)
    return _resolve(path, hosts, groups)


# OpenSSH client config

def ssh_glob(name: str, pattern: str) -> bool:
    """OpenSSH's pattern match: '*' and '?' only ('[' is literal, as in '[host]:2222')."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, name, re.DOTALL | re.IGNORECASE) is not None


def _ssh_pattern_match(patterns: list[str], name: str) -> bool:
    """ssh_config(5) Host matching: any positive pattern matches and no negated one does."""
    matched = False
    for p in patterns:
        if p.startswith("!"):
            if ssh_glob(name, p[1:]):
                return False
        elif ssh_glob(name, p):
            matched = True
    return matched


def parse_ssh_config(path: str, text: str) -> list[Entry]:
    """An OpenSSH client config: each Host alias without wildcards is a host, with HostName,
    Port, User and ProxyJump as ssh resolves them (the first value obtained wins, so `Host *`
    blocks give defaults). Match blocks are skipped."""
    blocks: list[tuple[list[str], int, dict]] = []  # (patterns, line, {keyword: (value, line)})
    current: dict | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = re.match(r"(\S+?)\s*(?:=\s*|\s+)(.*)$", stripped)
        if not m:
            raise FleetFileError(path, lineno, None, f"expected 'Keyword value', not {stripped!r}")
        keyword, value = m.group(1).lower(), m.group(2).strip()
        if keyword == "host":
            patterns = value.split()
            current = {}
            blocks.append((patterns, lineno, current))
        elif keyword == "match":
            current = None  # conditions we cannot evaluate here
        elif current is not None and keyword in ("hostname", "port", "user", "proxyjump"):
            current.setdefault(keyword, (value.strip('"'), lineno))
        elif current is None and not blocks and keyword in ("hostname", "port", "user", "proxyjump"):
            blocks.append((["*"], lineno, {keyword: (value.strip('"'), lineno)}))
    entries, seen = [], set()
    for patterns, line, _ in blocks:
        for alias in patterns:
            if alias.startswith("!") or any(c in alias for c in "*?") or alias in seen:
                continue
            seen.add(alias)
            found: dict = {}
            for pats, _, settings in blocks:
                if _ssh_pattern_match(pats, alias):
                    for k, v in settings.items():
                        found.setdefault(k, v)
            host = found.get("hostname", (alias, line))[0].replace("%h", alias)
            port = found.get("port")
            user = found.get("user")
            via = found.get("proxyjump")
            entries.append(Entry(
                name=alias, host=host, path=path, line=line,
                port=_port(path, port[1], alias, port[0]) if port else None,
                user=user[0] if user else None,
                via=None if not via or via[0].lower() == "none" else via[0]))
    return entries


# CSV

def parse_csv(path: str, text: str) -> list[Entry]:
    """CSV with a header row: name and host, optionally port, user, tags (separated by spaces or
    ';'), host_key (a public key line or a SHA256 fingerprint) and via (a bastion's name)."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise FleetFileError(path, 1, None, f"not valid CSV: {exc}") from None
    columns = [h.strip().lower() for h in header]
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown:
        raise FleetFileError(path, 1, None, f"unknown column(s) {', '.join(unknown)}: use {', '.join(CSV_COLUMNS)}")
    if "name" not in columns:
        raise FleetFileError(path, 1, None, "the header needs a 'name' column")
    entries = []
    try:
        for row in reader:
            lineno = reader.line_num
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if len(row) > len(columns):
                raise FleetFileError(path, lineno, row[0].strip() or None,
                                     f"{len(row)} fields but the header names {len(columns)}")
            d = {c: (row[i].strip() if i < len(row) else "") for i, c in enumerate(columns)}
            name = d["name"]
            if not name:
                raise FleetFileError(path, lineno, None, "empty name")
            entries.append(Entry(
                name=name, host=d.get("host") or name, path=path, line=lineno,
                port=_port(path, lineno, name, d["port"]) if d.get("port") else None,
                user=d.get("user") or None,
                tags=tuple(t for t in re.split(r"[;\s]+", d.get("tags", "")) if t),
                host_key=d.get("host_key") or None, via=d.get("via") or None))
    except csv.Error as exc:
        raise FleetFileError(path, reader.line_num, None, f"not valid CSV: {exc}") from None
    return entries


# known_hosts

def key_fingerprint(key_line: str) -> str:
    """SHA256 fingerprint of a 'type base64' public key, as ssh-keygen -l prints it."""
    blob = base64.b64decode(key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def check_key_line(text: str) -> str:
    """A public key 'type base64' (a comment dropped); ValueError when it is not one."""
    parts = text.split()
    if len(parts) < 2 or parts[0] not in _KEY_TYPES and not parts[0].endswith("-cert-v01@openssh.com"):
        raise ValueError(f"not a public key line: {text[:60]!r}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise ValueError("the key is not valid base64") from None
    n = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else 0
    if blob[4:4 + n].decode("ascii", "replace") != parts[0]:
        raise ValueError(f"the key's blob is not a {parts[0]} key")
    return f"{parts[0]} {parts[1]}"


def host_token(host: str, port: int) -> str:
    """How known_hosts names a host: 'host' on port 22, '[host]:port' otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass(frozen=True)
class KnownHost:
    """One line of a known_hosts file."""

    line: int
    patterns: tuple[str, ...]  # host patterns, or one hashed entry '|1|salt|hash'
    key: str  # 'type base64'
    marker: str | None = None  # None, 'cert-authority' or 'revoked'

    def matches(self, host: str, port: int) -> bool:
        """Whether this line names host:port (hashed entries by their HMAC-SHA1)."""
        names = {host_token(host, port)}
        if port == 22:
            names.add(f"[{host}]:22")
        if len(self.patterns) == 1 and self.patterns[0].startswith("|1|"):
            try:
                _, _, salt, digest = self.patterns[0].split("|")
                salt_b, digest_b = base64.b64decode(salt), base64.b64decode(digest)
            except ValueError:
                return False
            return any(hmac.compare_digest(hmac.new(salt_b, n.encode(), "sha1").digest(), digest_b) for n in names)
        matched = False
        for p in self.patterns:
            negate = p.startswith("!")
            pat = p[1:] if negate else p
            if any(ssh_glob(n, pat) for n in names):
                if negate:
                    return False
                matched = True
        return matched


def parse_known_hosts(path: str, text: str) -> list[KnownHost]:
    """The lines of a known_hosts file (markers @cert-authority and @revoked kept)."""
    out = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split()
        marker = None
        if parts[0].startswith("@"):
            marker = parts.pop(0)[1:]
            if marker not in ("cert-authority", "revoked"):
                raise FleetFileError(path, lineno, None, f"unknown marker @{marker}")
        if len(parts) < 3:
            raise FleetFileError(path, lineno, None, "expected 'hosts keytype key'")
        try:
            key = check_key_line(" ".join(parts[1:3]))
        except ValueError as exc:
            raise FleetFileError(path, lineno, parts[0][:60], str(exc)) from None
        out.append(KnownHost(lineno, tuple(parts[0].split(",")), key, marker))
    return out


class KnownHostsIndex:
    """known_hosts lines indexed for many lookups: literal names in a dict, hashed entries with
    their salt decoded once, patterns with wildcards or negations scanned (a bulk import looks
    up every host of a 1,000-line file; scanning and decoding every line per host took 13 ms)."""

    def __init__(self, known: list[KnownHost]):
        self.revoked = {k.key for k in known if k.marker == "revoked"}
        self.literal: dict[str, list[KnownHost]] = {}
        self.hashed: list[tuple[bytes, bytes, KnownHost]] = []
        self.patterned: list[KnownHost] = []
        for k in known:
            if len(k.patterns) == 1 and k.patterns[0].startswith("|1|"):
                try:
                    _, _, salt, digest = k.patterns[0].split("|")
                    self.hashed.append((base64.b64decode(salt), base64.b64decode(digest), k))
                except ValueError:
                    continue
            elif any(c in p for p in k.patterns for c in "*?!"):
                self.patterned.append(k)
            else:
                for p in k.patterns:
                    self.literal.setdefault(p.lower(), []).append(k)

    def lines_for(self, host: str, port: int) -> list[KnownHost]:
        """Every line naming host:port, in file order."""
        names = [host_token(host, port)] + ([f"[{host}]:22"] if port == 22 else [])
        found = {id(k): k for n in names for k in self.literal.get(n.lower(), ())}
        # ssh hashes the name as it looks it up: 'host' on port 22, '[host]:port' otherwise
        name = host_token(host, port).encode()
        for salt, digest, k in self.hashed:
            if hmac.compare_digest(hmac.digest(salt, name, "sha1"), digest):
                found[id(k)] = k
        for k in self.patterned:
            if k.matches(host, port):
                found[id(k)] = k
        return sorted(found.values(), key=lambda k: k.line)


def _index(known) -> KnownHostsIndex:
    return known if isinstance(known, KnownHostsIndex) else KnownHostsIndex(list(known))


def trusted_keys(known, host: str, port: int) -> list[str]:
    """The host keys known_hosts (lines or a KnownHostsIndex) trusts for host:port (revoked left out)."""
    index = _index(known)
    out: list[str] = []
    for k in index.lines_for(host, port):
        if k.marker is None and k.key not in index.revoked and k.key not in out:
            out.append(k.key)
    return out


def trusted_cas(known, host: str, port: int) -> list[str]:
    """The host CA keys (@cert-authority lines) that vouch for host:port."""
    index = _index(known)
    return [k.key for k in index.lines_for(host, port) if k.marker == "cert-authority" and k.key not in index.revoked]
