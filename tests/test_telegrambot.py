"""The Telegram bot in the real app (create_app), talking to a local Bot API server on loopback
that speaks the endpoints python-telegram-bot calls (the real Telegram cannot be reached here)."""
from __future__ import annotations

import dataclasses
import logging

import pytest

from central.config import ConfigError, TelegramConfig, load_config
from central.telegrambot import bot_token, check_bot
from tests.apiclient import password_hash, start_api
from tests.fakebotapi import FakeBotAPI
from tests.helpers import wait_for

TOKEN = "123456:TEST-token-abcdef"
ALLOWED, STRANGER = 1001, 666


@pytest.fixture
async def botapi():
    b = await FakeBotAPI(TOKEN).start()
    yield b
    await b.stop()


@pytest.fixture
async def bot_api(config, botapi, monkeypatch):
    """The app with the bot enabled for chat ALLOWED, acting as central user tgbot (operator)."""
    monkeypatch.setenv("CENTRAL_TEST_TG_TOKEN", TOKEN)
    tg = TelegramConfig(enabled=True, token_env="CENTRAL_TEST_TG_TOKEN", allowed_chats=(ALLOWED,), user="tgbot",
                        api_url=botapi.url, poll_timeout=1.0)
    cfg = dataclasses.replace(config, telegram=tg)
    api = await start_api(cfg)
    await api.central.storage.add_user("tgbot", "operator", password_hash())
    await wait_for(lambda: any(m == "getUpdates" for m, _ in botapi.calls), what="the bot to poll")
    yield api
    await api.client.close()
    assert botapi.unknown == [], f"the bot called Bot API methods the fake does not know: {botapi.unknown}"


async def firing_alert(api, server="web1"):
    storage = api.central.storage
    s = await storage.find_server(server) or await storage.add_server(server, "10.0.0.5", tags=("prod",))
    [alert_id] = await storage.save_alerts([{
        "rule": "disk_almost_full", "server_id": s.id, "label": "/var", "severity": "warning", "state": "firing",
        "summary": "/var on web1 is 97% full (threshold 90%)", "value": 97.0, "started_at": 1000.0,
        "fired_at": 1000.0, "last_evaluated": 1000.0, "details": {}}], [], [])
    return alert_id


def replies(botapi, chat=ALLOWED):
    return [m for m in botapi.sent if int(m["chat_id"]) == chat]


async def test_commands_answer_the_allowed_chat_only(bot_api, botapi, caplog):
    await firing_alert(bot_api)
    caplog.set_level(logging.WARNING, logger="central.telegrambot")
    botapi.say(STRANGER, "/status")
    botapi.say(STRANGER, "/servers")
    botapi.say(ALLOWED, "/status")
    await wait_for(lambda: replies(botapi), what="the /status reply")
    [status] = replies(botapi)
    assert status["text"].splitlines()[0].startswith("2 servers: ")  # local and web1
    assert "Alerts firing: 1 (critical 0, warning 1, info 0)" in status["text"]
    botapi.say(ALLOWED, "/servers prod")
    botapi.say(ALLOWED, "/server web1")
    botapi.say(ALLOWED, "/server nosuch")
    await wait_for(lambda: len(replies(botapi)) == 4, what="three more replies")
    servers, server, nosuch = (m["text"] for m in replies(botapi)[1:])
    assert servers.startswith("web1: unknown") and "local" not in servers
    assert server.startswith("web1 (10.0.0.5): unknown") and "Open alerts: 1" in server and "#" in server
    assert nosuch == "no server named 'nosuch'"
    assert replies(botapi, STRANGER) == []  # the stranger got nothing, twice, and is logged once
    ignored = [r.getMessage() for r in caplog.records if "ignoring chat" in r.getMessage()]
    assert ignored == [f"telegram: ignoring chat {STRANGER} (not in telegram.allowed_chats)"]


async def test_alert_buttons_ack_and_silence_as_the_configured_user(bot_api, botapi):
    alert_id = await firing_alert(bot_api)
    botapi.say(ALLOWED, "/alerts")
    await wait_for(lambda: replies(botapi), what="the /alerts reply")
    [msg] = replies(botapi)
    assert msg["text"].startswith(f"#{alert_id} WARNING web1: disk_almost_full")
    buttons = [b for row in msg["reply_markup"]["inline_keyboard"] for b in row]
    assert [(b["text"], b["callback_data"]) for b in buttons] == [("Acknowledge", f"ack:{alert_id}"),
                                                                   ("Silence 1h", f"silence:{alert_id}")]
    botapi.press(ALLOWED, f"ack:{alert_id}")
    await wait_for(lambda: botapi.answers, what="the button's answer")
    assert botapi.answers[0]["text"] == f"Alert #{alert_id} acknowledged as tgbot."
    assert (await bot_api.central.storage.get_alert(alert_id))["acked_by"] == "tgbot"
    botapi.press(ALLOWED, f"silence:{alert_id}")
    await wait_for(lambda: len(botapi.answers) == 2, what="the second answer")
    [silence] = await bot_api.central.storage.list_silences(active_at=0)
    assert silence["matcher"] == {"server": "web1", "rule": "disk_almost_full"} and silence["created_by"] == "tgbot"
    assert silence["comment"] == f"from Telegram by telegram:{ALLOWED} @user{ALLOWED}"
    assert silence["ends_at"] - silence["starts_at"] == 3600.0
    # A stranger's press (forged callback data from another chat) does nothing.
    botapi.press(STRANGER, f"ack:{alert_id}")
    await wait_for(lambda: len(botapi.answers) == 3, what="the stranger's answer")
    assert botapi.answers[2]["text"] == "Not allowed."


async def test_buttons_follow_the_central_user_s_role_now(bot_api, botapi):
    alert_id = await firing_alert(bot_api)
    await bot_api.central.auth.set_role("tgbot", "viewer")  # demoted after the bot started
    botapi.press(ALLOWED, f"ack:{alert_id}")
    await wait_for(lambda: botapi.answers, what="the answer")
    assert botapi.answers[0]["text"] == "tgbot is a viewer: acknowledging and silencing need operator."
    assert (await bot_api.central.storage.get_alert(alert_id))["acked_by"] is None
    botapi.press(ALLOWED, "rm -rf:1")
    await wait_for(lambda: len(botapi.answers) == 2, what="the second answer")
    assert botapi.answers[1]["text"] == "Unknown button."


async def test_the_bot_starts_once_the_bot_api_can_be_reached_logging_it_once(config, botapi, monkeypatch, caplog):
    from central.telegrambot import TelegramBot

    monkeypatch.setattr(TelegramBot, "RETRY_DELAY", 0.05)
    monkeypatch.setenv("CENTRAL_TEST_TG_TOKEN", TOKEN)
    botapi.down_for = 3
    caplog.set_level(logging.INFO, logger="central.telegrambot")
    tg = TelegramConfig(enabled=True, token_env="CENTRAL_TEST_TG_TOKEN", allowed_chats=(ALLOWED,), user="tgbot",
                        api_url=botapi.url, poll_timeout=1.0)
    api = await start_api(dataclasses.replace(config, telegram=tg))
    try:
        botapi.say(ALLOWED, "/status")
        await wait_for(lambda: replies(botapi), what="a reply once the API is up")
    finally:
        await api.client.close()
    logged = [r.getMessage() for r in caplog.records if r.name == "central.telegrambot"]
    assert len([m for m in logged if "cannot be reached" in m]) == 1, logged
    assert "telegram: the Bot API works again" in logged and TOKEN not in "\n".join(logged)


def test_bot_config_errors_name_the_key(tmp_path):
    base = 'data_dir = "/nonexistent"\n[telegram]\nenabled = true\n'
    cases = {
        "": "telegram.token_env: give one of token_env or token_file",
        'token_env = "X"\n': "telegram.allowed_chats: required",
        'token_env = "X"\nallowed_chats = [1]\n': "telegram.user: required",
        'token_env = "X"\nallowed_chats = ["a"]\nuser = "u"\n': "telegram.allowed_chats: expected a list of whole numbers",
    }
    for extra, message in cases.items():
        path = tmp_path / "c.toml"
        path.write_text(base + extra)
        with pytest.raises(ConfigError) as err:
            load_config(path, env={})
        assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    cfg = TelegramConfig(enabled=True, token_env="CENTRAL_NO_TOKEN", allowed_chats=(1,), user="u")
    with pytest.raises(ConfigError, match="^telegram.token_env: the environment variable CENTRAL_NO_TOKEN is not set"):
        check_bot(cfg)
    (tmp_path / "tok").write_text(TOKEN + "\n")
    assert bot_token(dataclasses.replace(cfg, token_env="", token_file=str(tmp_path / "tok"))) == TOKEN
