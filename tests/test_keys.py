"""Keys, allow lists, the ZAP handler's replies and the MACs on keyed datagrams: the pure parts of
a members-only mesh, exactly. (tests/test_members.py runs keyed nodes.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

import mesh
from mesh._beatkeys import MAC_SIZE, BeatKeys
from mesh._binding import check_keyed
from mesh._keys import load_allowed
from mesh._members import zap_reply

# -- key pairs -----------------------------------------------------------------------------------


def test_a_key_pair_saved_is_the_pair_loaded(tmp_path: Path) -> None:
    pair = mesh.KeyPair.generate()
    pair.save(tmp_path / "node")
    assert mesh.KeyPair.load(tmp_path / "node") == pair
    assert (tmp_path / "node.pub").read_text() == pair.public + "\n"
    # The secret is the node's identity: readable by its owner only; its repr leaves it out.
    assert stat.S_IMODE((tmp_path / "node").stat().st_mode) == 0o600
    assert pair.secret not in repr(pair)
    assert zmq.curve_public(pair.secret.encode()).decode() == pair.public


def test_a_key_pair_is_never_overwritten(tmp_path: Path) -> None:
    first = mesh.KeyPair.generate()
    first.save(tmp_path / "node")
    with pytest.raises(FileExistsError):
        mesh.KeyPair.generate().save(tmp_path / "node")
    (tmp_path / "node.pub").unlink()
    with pytest.raises(FileExistsError):
        mesh.KeyPair.generate().save(tmp_path / "node")
    assert mesh.KeyPair.load(tmp_path / "node") == first


def test_a_file_that_is_not_a_key_pair_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("hello\n")
    with pytest.raises(ValueError, match="is not a key pair"):
        mesh.KeyPair.load(tmp_path / "junk")
    other = mesh.KeyPair.generate()
    pair = mesh.KeyPair.generate()
    (tmp_path / "mixed").write_text(
        f'public-key = "{other.public}"\nsecret-key = "{pair.secret}"\n'
    )
    with pytest.raises(ValueError, match="not that of its secret key"):
        mesh.KeyPair.load(tmp_path / "mixed")
    with pytest.raises(ValueError, match="40 characters of Z85"):
        mesh.KeyPair("short", pair.secret)


# -- allow lists ---------------------------------------------------------------------------------


def test_an_allow_file_has_a_key_a_line_and_comments(tmp_path: Path) -> None:
    keys = [mesh.KeyPair.generate().public for _ in range(3)]
    (tmp_path / "members").write_text(
        f"# the members\n\n{keys[0]}\n  {keys[1]}  # worker 2\n{keys[2]}\t# (a tab too)\n"
    )
    assert load_allowed(tmp_path / "members") == frozenset(keys)
    assert load_allowed(str(tmp_path / "members")) == frozenset(keys)


def test_an_allow_directory_holds_pub_files(tmp_path: Path) -> None:
    pairs = [mesh.KeyPair.generate() for _ in range(3)]
    for index, pair in enumerate(pairs):
        pair.save(tmp_path / f"node-{index}")  # the secret files beside them are not read
    assert load_allowed(tmp_path) == frozenset(pair.public for pair in pairs)


def test_an_allow_list_with_a_bad_line_names_it(tmp_path: Path) -> None:
    good = mesh.KeyPair.generate().public
    (tmp_path / "members").write_text(f"{good}\nnot-a-key\n")
    with pytest.raises(ValueError, match=r"members, line 2: not a public key"):
        load_allowed(tmp_path / "members")
    with pytest.raises(ValueError, match="not a public key"):
        load_allowed([good, "nope"])
    with pytest.raises(FileNotFoundError):
        load_allowed(tmp_path / "absent")


# -- the safe default ----------------------------------------------------------------------------


def test_an_open_node_only_on_loopback_unless_insecure(caplog: pytest.LogCaptureFixture) -> None:
    pair = mesh.KeyPair.generate()
    check_keyed(["127.0.0.1", "::1", "127.0.0.2"], None, (), insecure=False)
    check_keyed(["192.0.2.7"], pair, (), insecure=False)
    with pytest.raises(ValueError, match="mesh-cli keygen"):
        check_keyed(["127.0.0.1", "192.0.2.7"], None, (), insecure=False)
    assert not caplog.records
    check_keyed(["192.0.2.7"], None, (), insecure=True)
    assert "running open (no key) on 192.0.2.7" in caplog.text
    with pytest.raises(ValueError, match="allow list needs a key"):
        check_keyed(["127.0.0.1"], None, [pair.public], insecure=False)
    with pytest.raises(ValueError, match="one or the other"):
        check_keyed(["127.0.0.1"], pair, (), insecure=True)


async def test_open_node_refuses_to_run_open_off_loopback_before_binding() -> None:
    # 192.0.2.7 (TEST-NET-1) is on no interface here: binding it would fail with OSError, so a
    # ValueError says the refusal came first.
    with pytest.raises(ValueError, match="refusing to run open"):
        async with mesh.open_node("n", interface="192.0.2.7", discovery="static"):
            pass
    pair = mesh.KeyPair.generate()
    with pytest.raises(ValueError, match="contact"):
        async with mesh.open_node("n", key=pair, seeds=["~" * 40 + "@127.0.0.1:9"]):
            pass


# -- the ZAP handler's replies -------------------------------------------------------------------


def zap_request(mechanism: bytes, *credentials: bytes) -> list[bytes]:
    return [b"1.0", b"7", b"mesh", b"127.0.0.1", b"", mechanism, *credentials]


def test_zap_accepts_an_allowed_curve_key_as_the_user_id() -> None:
    public = mesh.KeyPair.generate().public
    raw = z85.decode(public)
    reply, key = zap_reply(zap_request(b"CURVE", raw), {public}.__contains__)
    assert reply == [b"1.0", b"7", b"200", b"OK", public.encode(), b""]
    assert key == public
    reply, key = zap_reply(zap_request(b"CURVE", raw), set().__contains__)
    assert reply == [b"1.0", b"7", b"400", b"key not allowed", b"", b""]
    assert key == public


@pytest.mark.parametrize(
    "request_",
    [
        zap_request(b"NULL"),
        zap_request(b"PLAIN", b"user", b"password"),
        zap_request(b"CURVE", b"short"),
        zap_request(b"CURVE", bytes(32), b"extra"),
    ],
    ids=["null", "plain", "short-key", "extra-frame"],
)
def test_zap_refuses_anything_but_curve(request_: list[bytes]) -> None:
    reply, _ = zap_reply(request_, lambda key: True)
    assert reply[1:4] == [b"7", b"400", b"CURVE only"]


def test_zap_answers_a_malformed_request_with_an_error() -> None:
    assert zap_reply([b"2.0", b"9", b"", b"", b"", b"CURVE", bytes(32)], lambda key: True)[0][
        :3
    ] == [b"1.0", b"9", b"500"]
    assert zap_reply([], lambda key: True)[0][:3] == [b"1.0", b"", b"500"]


# -- MACs on keyed datagrams ---------------------------------------------------------------------


def test_a_datagram_mac_checks_only_with_the_pair_key_its_sender_gave() -> None:
    a, b = BeatKeys(os.urandom(32)), BeatKeys(os.urandom(32))
    a_id, b_id, c_id = b"a" * 16, b"b" * 16, b"c" * 16
    datagram = b"\x95heartbeat"
    signed = a.sign(datagram, b_id)
    assert len(signed) == len(datagram) + MAC_SIZE
    body, mac = signed[:-MAC_SIZE], signed[-MAC_SIZE:]
    assert not b.verify(a_id, body, mac)  # a's READY, with the key, has not come yet
    b.take(a_id, a.given(b_id))
    assert b.verify(a_id, body, mac)
    assert not b.verify(a_id, body + b"x", mac)
    assert not b.verify(a_id, body, bytes(MAC_SIZE))
    assert not b.verify(c_id, body, mac)  # the same bytes under another id
    # Per pair: what a gives c is not what it gives b; a key is stable while the peer is known.
    assert a.given(c_id) != a.given(b_id)
    assert a.given(b_id) == a.given(b_id)
    b.forget(a_id)
    assert not b.verify(a_id, body, mac)
