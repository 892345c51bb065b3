"""Keys: a node's CurveZMQ key pair and the allow list of its mesh's members.

A key pair lives in two files: ``PATH`` holds both keys (mode 0600: the secret key is the node's
identity, whoever reads it can join as that node) and ``PATH.pub`` the public key alone, one
line of Z85, to hand to the other members' allow lists. An allow list is a file of public keys,
one a line (blank lines are skipped, and so is what follows ``#`` at the start of a line or
after a space: ``#`` is also a letter of Z85), or a directory of ``*.pub`` files, each such a
file. Every error is a `ValueError` or `OSError` whose message names the file."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import zmq

from discovery import is_public_key

_PUBLIC: Final = "public-key"
_SECRET: Final = "secret-key"


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CurveZMQ key pair: `public` and `secret`, each 40 characters of Z85. Its `repr` leaves
    the secret out."""

    public: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not is_public_key(self.public) or not is_public_key(self.secret):
            raise ValueError("a key pair is two keys of 40 characters of Z85")

    @classmethod
    def generate(cls) -> KeyPair:
        """A new key pair."""
        public, secret = zmq.curve_keypair()
        return cls(public.decode(), secret.decode())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyPair:
        """The key pair saved at `path` by `save` (or ``mesh-cli keygen``)."""
        values: dict[str, str] = {}
        for line in _lines(Path(path)):
            name, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                values[name.strip()] = value.strip().strip('"')
        try:
            pair = cls(values[_PUBLIC], values[_SECRET])
        except (KeyError, ValueError):
            raise ValueError(
                f"{path} is not a key pair ({_PUBLIC} = ... and {_SECRET} = ..., as "
                "'mesh-cli keygen' writes)"
            ) from None
        if zmq.curve_public(pair.secret.encode()).decode() != pair.public:
            raise ValueError(f"{path}: its public key is not that of its secret key")
        return pair

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the pair to `path` (mode 0600) and the public key to ``path + ".pub"``. Refuses
        (`FileExistsError`) to overwrite either: a lost secret key cannot be made again."""
        secret_path = Path(path)
        public_path = Path(f"{secret_path}.pub")
        if public_path.exists():
            raise FileExistsError(f"{public_path} exists: not overwriting it")
        text = (
            "# A mesh node's CurveZMQ key pair. Keep this file secret: whoever reads it can\n"
            "# join a mesh as this node. Give the other members the .pub file beside it.\n"
            f'{_PUBLIC} = "{self.public}"\n'
            f'{_SECRET} = "{self.secret}"\n'
        )
        descriptor = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        public_path.write_text(self.public + "\n")


def as_key_pair(key: KeyPair | str | os.PathLike[str]) -> KeyPair:
    """`key` itself, or the pair saved at that path."""
    return key if isinstance(key, KeyPair) else KeyPair.load(key)


def load_allowed(allow: str | os.PathLike[str] | Iterable[str]) -> frozenset[str]:
    """The public keys `allow` names: a path (a file of keys, one a line, or a directory of
    ``*.pub`` files) or the keys themselves."""
    if isinstance(allow, str | os.PathLike):
        path = Path(allow)
        files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
        keys: set[str] = set()
        for file in files:
            for number, line in enumerate(_lines(file), 1):
                key = line.split(None, 1)[0]
                if is_public_key(key):
                    keys.add(key)
                elif not key.startswith("#"):
                    raise ValueError(
                        f"{file}, line {number}: not a public key (40 characters of Z85)"
                    )
        return frozenset(keys)
    keys = set()
    for key in allow:
        if not is_public_key(key):
            raise ValueError(f"{key!r} is not a public key (40 characters of Z85)")
        keys.add(key)
    return frozenset(keys)


def _lines(path: Path) -> list[str]:
    """The lines of `path` that are not blank, stripped, and each without what follows a
    ``#`` after a space (a comment)."""
    with path.open(encoding="ascii", errors="replace") as file:
        text = file.read(_MOST_READ)
    lines = (line.split(" #", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


# What a key or allow-list file is read up to: far more than any has (a key is 41 bytes).
_MOST_READ: Final = 16 << 20
