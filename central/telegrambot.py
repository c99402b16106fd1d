"""The optional Telegram bot: the fleet at a glance for allowed chats, and buttons on alerts.

Built on python-telegram-bot (`pip install 'central[telegram]'`), long polling the Bot API at
`telegram.api_url` (Telegram's, or a self-hosted Bot API server). It answers only the chat ids
in `telegram.allowed_chats` and ignores everyone else (logged once per chat). Commands:
/status (fleet summary), /servers [tag], /server NAME (key figures), /alerts (open alerts,
each with Acknowledge and Silence buttons).

Buttons act as the central user `telegram.user`, with that user's role as it is now (looked
up per press): acknowledging and silencing need operator, as in the API. Each action is
recorded under that user (the alert's acked_by, the silence's created_by, with the Telegram
sender in the comment) and logged. Replies are plain text (no parse mode), so host text can
neither format nor link; it is cleaned of control and bidi characters too.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re

from . import alerts, views
from .auth import role_allows
from .config import ConfigError, TelegramConfig
from .hosttext import clean
from .messages import fmt_duration
from .model import OPERATOR, CentralError

log = logging.getLogger(__name__)

MAX_LISTED = 30  # servers or alerts per reply; Telegram caps a message at 4096 characters
_CALLBACK = re.compile(r"^(ack|silence):(\d{1,12})$")


def bot_token(cfg: TelegramConfig, env=None) -> str:
    """The bot token from token_env or token_file; ConfigError naming the key (never the token)."""
    env = os.environ if env is None else env
    if cfg.token_env:
        token = env.get(cfg.token_env, "").strip()
        if not token:
            raise ConfigError(f"telegram.token_env: the environment variable {cfg.token_env} is not set or empty")
        return token
    try:
        with open(cfg.token_file, encoding="utf-8") as fh:
            token = fh.read(4096).strip()
    except OSError as exc:
        raise ConfigError(f"telegram.token_file: cannot read {cfg.token_file}: {exc.strerror or exc}") from None
    if not token:
        raise ConfigError(f"telegram.token_file: {cfg.token_file} is empty")
    return token


def check_bot(cfg: TelegramConfig) -> None:
    """Before serving: an enabled bot has its library and its token; ConfigError naming the key."""
    if not cfg.enabled:
        return
    try:
        import telegram  # noqa: F401 - the optional dependency
    except ImportError:
        raise ConfigError("telegram.enabled: the bot needs python-telegram-bot: pip install 'central[telegram]'") from None
    bot_token(cfg)


def _pct(v) -> str:
    return "–" if v is None else f"{v:.0f}%"


# What the bot says: one function per command, over the same data functions as the API.

async def status_text(central) -> str:
    """/status: servers by status, alerts open, fleet averages."""
    f = await views.fleet_stats(central)
    firing = await alerts.list_alerts(central, firing_only=True, limit=1000)
    by_sev = {s: sum(1 for a in firing if a["severity"] == s) for s in ("critical", "warning", "info")}
    avg = f["averages"]
    return "\n".join([
        f"{f['total']} servers: {f['online']} online, {f['offline']} offline, {f['error']} error, {f['unknown']} unknown",
        f"Alerts firing: {len(firing)} (critical {by_sev['critical']}, warning {by_sev['warning']}, info {by_sev['info']})",
        f"Average CPU {_pct(avg['cpu'])}, memory {_pct(avg['mem'])}, disk {_pct(avg['disk'])}",
    ])


async def servers_text(central, tag: str | None = None) -> str:
    """/servers [tag]: one line per server with status and key figures."""
    listing = await views.server_list(central, tag=tag, limit=MAX_LISTED)
    if not listing["servers"]:
        return f"No servers with tag {clean(tag, 40)}." if tag else "No servers."
    lines = []
    for s in listing["servers"]:
        sample = s.get("sample") or {}
        reason = f" ({s['status_reason']})" if s.get("status_reason") else ""
        lines.append(f"{clean(s['name'], 63)}: {s['status']}{reason} · CPU {_pct(sample.get('cpu'))} "
                     f"· mem {_pct(sample.get('mem'))} · disk {_pct(sample.get('disk'))}")
    if listing["total"] > len(listing["servers"]):
        lines.append(f"... and {listing['total'] - len(listing['servers'])} more")
    return "\n".join(lines)


async def server_text(central, name: str) -> str:
    """/server NAME: status, host, key figures, load, uptime, open alerts."""
    d = await views.server_detail(central, name)
    s = d["server"]
    doc = (d["latest"] or {}).get("document") or {}
    sample = (await central.storage.latest_samples()).get(s["id"]) or {}
    lines = [f"{clean(s['name'], 63)} ({clean(s.get('hostname') or s['host'], 100)}): {s['status']}"
             + (f", {s['status_reason']}" if s.get("status_reason") else "")]
    lines.append(f"CPU {_pct(sample.get('cpu'))} · memory {_pct(sample.get('mem'))} · swap {_pct(sample.get('swap'))}"
                 f" · disk {_pct(sample.get('disk'))}")
    if sample.get("load1") is not None:
        lines.append(f"Load {sample.get('load1'):.2f} {sample.get('load5') or 0:.2f} {sample.get('load15') or 0:.2f}")
    uptime = doc.get("uptime") if isinstance(doc.get("uptime"), (int, float)) else None
    if uptime is not None:
        lines.append(f"Up {fmt_duration(uptime)}")
    open_alerts = await alerts.list_alerts(central, open_only=True, server=name, limit=MAX_LISTED)
    lines.append(f"Open alerts: {len(open_alerts)}")
    lines.extend(f"- #{a['id']} {a['severity']} {a['rule']}: {clean(a['summary'], 200)}" for a in open_alerts)
    return "\n".join(lines)


async def alerts_reply(central) -> list[tuple[str, list[tuple[str, str]]]]:
    """/alerts: one (text, [(button label, callback data)]) per open firing alert, or one line saying none."""
    rows = await alerts.list_alerts(central, firing_only=True, limit=MAX_LISTED)
    if not rows:
        return [("Nothing is firing.", [])]
    out = []
    for a in rows:
        acked = f"\nAcknowledged by {clean(a['acked_by'], 100)}" if a.get("acked_by") else ""
        text = (f"#{a['id']} {a['severity'].upper()} {clean(a['server'] or '-', 63)}: {a['rule']}\n"
                f"{clean(a['summary'], 500)}{acked}")
        buttons = [] if a.get("acked_by") else [("Acknowledge", f"ack:{a['id']}")]
        buttons.append(("Silence 1h" if central.config.telegram.silence_for == 3600 else
                        f"Silence {fmt_duration(central.config.telegram.silence_for)}", f"silence:{a['id']}"))
        out.append((text, buttons))
    return out


async def press(central, data: str, sender: str) -> str:
    """A button press (callback data ack:ID or silence:ID) by a Telegram sender: what happened, in one line."""
    cfg = central.config.telegram
    m = _CALLBACK.match(data or "")
    if m is None:
        return "Unknown button."
    user = await central.storage.find_user(cfg.user)
    if user is None:
        log.warning("telegram: the configured central user %r does not exist; button refused", cfg.user)
        return f"The bot's central user {cfg.user} does not exist."
    if not role_allows(user["role"], OPERATOR):
        return f"{cfg.user} is a {user['role']}: acknowledging and silencing need operator."
    kind, alert_id = m.group(1), int(m.group(2))
    try:
        if kind == "ack":
            a = await alerts.ack(central, alert_id, cfg.user)
            log.info("telegram: %s acknowledged alert %d as central user %s", sender, alert_id, cfg.user)
            return f"Alert #{a['id']} acknowledged as {cfg.user}."
        a = await alerts.get_alert(central, alert_id)
        if a["server"] is None:
            return f"Alert #{alert_id} has no server to silence."
        s = await alerts.create_silence(central, server=a["server"], rule=a["rule"],
                                        duration=cfg.silence_for, comment=f"from Telegram by {sender}", user=cfg.user)
        log.info("telegram: %s silenced %s on %s for %s as central user %s (silence %d)", sender, a["rule"],
                 a["server"], fmt_duration(cfg.silence_for), cfg.user, s["id"])
        return f"{a['rule']} on {a['server']} silenced for {fmt_duration(cfg.silence_for)} (silence {s['id']})."
    except CentralError as exc:
        return exc.message


def _sender(user) -> str:
    if user is None:
        return "telegram:unknown"
    name = f"@{user.username}" if user.username else clean(user.full_name or "", 60)
    return f"telegram:{user.id} {name}".strip()[:100]


class TelegramBot:
    """The running bot: a python-telegram-bot Application polling in the central's event loop."""

    RETRY_DELAY = 5.0  # first wait before trying to start again; doubles up to 5 minutes

    def __init__(self, central, cfg: TelegramConfig, token: str):
        self.central = central
        self.cfg = cfg
        self.token = token
        self.app = None
        self._ignored: set[int] = set()
        self._failing = False

    @classmethod
    def from_config(cls, central) -> "TelegramBot":
        """The bot for central.config.telegram; ConfigError when the token or the library is missing."""
        cfg = central.config.telegram
        check_bot(cfg)
        return cls(central, cfg, bot_token(cfg))

    async def run(self) -> None:
        """Start, retrying with backoff while the Bot API cannot be reached (logged once); then return."""
        delay = self.RETRY_DELAY
        while True:
            try:
                await self.start()
                self._ok()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the central runs on without the bot meanwhile
                self._poll_error(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 300.0)

    async def start(self) -> None:
        """Connect (getMe), then long-poll for updates in the background."""
        from telegram.ext import Application, CallbackQueryHandler, CommandHandler, MessageHandler, filters
        from telegram.request import HTTPXRequest

        api = self.cfg.api_url.rstrip("/")
        # Our own request objects, so that a start that fails half-way can close them.
        requests = [HTTPXRequest(), HTTPXRequest(read_timeout=self.cfg.poll_timeout + 10.0)]
        app = (Application.builder().token(self.token).base_url(f"{api}/bot").base_file_url(f"{api}/file/bot")
               .request(requests[0]).get_updates_request(requests[1]).build())
        chats = filters.Chat(chat_id=list(self.cfg.allowed_chats))
        for name, fn in (("status", self._status), ("servers", self._servers), ("server", self._server),
                         ("alerts", self._alerts), ("start", self._help), ("help", self._help)):
            app.add_handler(CommandHandler(name, fn, filters=chats))
        app.add_handler(CallbackQueryHandler(self._button))
        app.add_handler(MessageHandler(~chats, self._ignore))
        try:
            await app.initialize()
        except BaseException:
            for r in requests:
                await r.shutdown()
            raise
        self.app = app
        await app.start()
        await app.updater.start_polling(timeout=int(self.cfg.poll_timeout), error_callback=self._poll_error,
                                        allowed_updates=["message", "callback_query"])
        log.info("telegram: bot @%s answers %d chat(s)", app.bot.username, len(self.cfg.allowed_chats))

    async def stop(self) -> None:
        """Stop polling and close the bot's HTTP client."""
        if self.app is None:
            return
        if self.app.updater is not None and self.app.updater.running:
            await self.app.updater.stop()
        if self.app.running:
            await self.app.stop()
        await self.app.shutdown()
        self.app = None

    def _poll_error(self, exc) -> None:
        # Once per failing stretch, not per poll (the library retries by itself).
        if not self._failing:
            self._failing = True
            log.warning("telegram: the Bot API cannot be reached: %s (retrying; logged once)", clean(str(exc), 200))

    def _ok(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("telegram: the Bot API works again")

    async def _reply(self, update, text: str, buttons=None) -> None:
        from telegram import InlineKeyboardButton, InlineKeyboardMarkup

        markup = None
        if buttons:
            markup = InlineKeyboardMarkup([[InlineKeyboardButton(label, callback_data=data) for label, data in buttons]])
        await update.effective_chat.send_message(text[:4000], reply_markup=markup)

    async def _guard(self, update, fn) -> None:
        self._ok()
        try:
            await fn()
        except CentralError as exc:
            await self._reply(update, exc.message)
        except Exception:  # noqa: BLE001 - say so in the chat rather than leave it silent
            log.exception("telegram: a command failed")
            await self._reply(update, "Something went wrong on the central; its log says what.")

    async def _help(self, update, context) -> None:
        await self._reply(update, "/status — the fleet\n/servers [tag] — servers and key figures\n"
                                  "/server NAME — one server\n/alerts — what fires, with buttons")

    async def _status(self, update, context) -> None:
        await self._guard(update, lambda: self._send(update, status_text(self.central)))

    async def _servers(self, update, context) -> None:
        tag = context.args[0] if context.args else None
        await self._guard(update, lambda: self._send(update, servers_text(self.central, tag)))

    async def _server(self, update, context) -> None:
        if not context.args:
            await self._reply(update, "Usage: /server NAME")
            return
        await self._guard(update, lambda: self._send(update, server_text(self.central, context.args[0])))

    async def _send(self, update, text_coro) -> None:
        await self._reply(update, await text_coro)

    async def _alerts(self, update, context) -> None:
        async def run():
            for text, buttons in await alerts_reply(self.central):
                await self._reply(update, text, buttons)
        await self._guard(update, run)

    async def _button(self, update, context) -> None:
        query = update.callback_query
        chat = query.message.chat.id if query.message is not None else None
        if chat not in self.cfg.allowed_chats:
            self._log_ignored(chat)
            await query.answer("Not allowed.")
            return
        text = await press(self.central, query.data, _sender(query.from_user))
        await query.answer(text[:190])
        await self._reply(update, text)

    async def _ignore(self, update, context) -> None:
        self._log_ignored(update.effective_chat.id if update.effective_chat else None)

    def _log_ignored(self, chat) -> None:
        if chat not in self._ignored and len(self._ignored) < 1000:
            self._ignored.add(chat)
            log.warning("telegram: ignoring chat %s (not in telegram.allowed_chats)", chat)
