#!/usr/bin/env python3
"""What an SSH connection to the guest costs, per host key, key exchange and client key.

    .venv/bin/python bench/ssh_handshake.py [--runs N]

A restored run spends a good part of its time in the SSH connection, and
under TCG that is the guest's work: dropbear's key exchange, its host-key
signature and its check of the client's signature.  This restores the
default guest, starts a dropbear for each host-key type (keys made on the
host with dropbearkey) on the guest's loopback, and connects to each
through a forwarded channel of the session's own connection, for every
key exchange and client key type that both dropbear and paramiko offer.
It prints QEMU's CPU seconds (all its threads, /proc/PID/task/*/schedstat:
the guest's work, whatever the host's load) for the key exchange with the
host-key signature, for the public-key authentication, and for one
command, median of N.  The harness uses an ed25519 host key, the key
exchange paramiko prefers (curve25519) and an ECDSA client key.

Then, for each cipher and MAC that both offer (dropbear 2022.83 in the
image: aes128-ctr, aes256-ctr, chacha20-poly1305, which paramiko 5 does
not have; MACs hmac-sha1 and hmac-sha2-256), QEMU's CPU seconds for one
command that sends BLOB_BYTES of random data back (the downfall case's
output is about that size) over a connection to the guest's own SSH server.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from buddylab.guest import session

HOST_KEYS = {"ed25519": ("ssh-ed25519", 2201), "ecdsa": ("ecdsa-sha2-nistp256", 2202),
             "rsa": ("rsa-sha2-256", 2203)}
KEX = ("curve25519-sha256@libssh.org", "ecdh-sha2-nistp256", "diffie-hellman-group14-sha256")
CIPHERS = (("aes128-ctr", "hmac-sha2-256"), ("aes128-ctr", "hmac-sha1"),
           ("aes256-ctr", "hmac-sha2-256"))
BLOB_BYTES = 200_000


def client_keys() -> dict[str, paramiko.PKey]:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode()
    return {"ecdsa": paramiko.ECDSAKey.generate(bits=256),
            "ed25519": paramiko.Ed25519Key.from_private_key(io.StringIO(pem)),
            "rsa": paramiko.RSAKey.generate(2048)}


def qemu_cpu(pid: int) -> float:
    """CPU seconds of every thread of process `pid` so far."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass                    # a thread that ended meanwhile
    return total / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    keys = client_keys()
    prepared = session.prepare()
    with tempfile.TemporaryDirectory(prefix="buddylab-sshbench-") as tmp, \
            session.boot(prepared) as g:
        for kind, (_, port) in HOST_KEYS.items():
            path = Path(tmp) / kind
            extra = ["-s", "2048"] if kind == "rsa" else []
            subprocess.run(["dropbearkey", "-t", kind, "-f", str(path), *extra], check=True,
                           capture_output=True)
            g.run(f"cat > /tmp/hk_{kind}", stdin=path.read_bytes()).check()
            g.run(f"dropbear -p 127.0.0.1:{port} -r /tmp/hk_{kind} -s").check()
        lines = "".join(f"{k.get_name()} {k.get_base64()}\n" for k in keys.values())
        g.run("cat >> /root/.ssh/authorized_keys", stdin=lines.encode()).check()
        outer = g.shell._client.get_transport()
        assert outer is not None and g.qemu.proc is not None
        pid = g.qemu.proc.pid

        def connect(host_key: str, kex: str, client: str) -> tuple[float, float, float]:
            key_type, port = HOST_KEYS[host_key]
            chan = outer.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0))
            t = paramiko.Transport(chan)
            t.get_security_options().kex = [kex]
            t.get_security_options().key_types = [key_type]
            try:
                a = qemu_cpu(pid)
                t.start_client(timeout=60)
                b = qemu_cpu(pid)
                t.auth_publickey("root", keys[client])
                c = qemu_cpu(pid)
                s = t.open_session()
                s.exec_command("true")
                s.recv_exit_status()
                return b - a, c - b, qemu_cpu(pid) - c
            finally:
                t.close()
        def transfer(cipher: str, mac: str) -> float:
            """QEMU CPU seconds of one command sending BLOB_BYTES back with `cipher` and `mac`."""
            chan = outer.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 0))
            t = paramiko.Transport(chan)
            t.get_security_options().ciphers = [cipher]
            t.get_security_options().digests = [mac]
            try:
                t.start_client(timeout=60)
                t.auth_publickey("root", keys["ecdsa"])
                a = qemu_cpu(pid)
                s = t.open_session()
                s.exec_command("cat /tmp/blob")
                got = 0
                while data := s.recv(65536):
                    got += len(data)
                s.recv_exit_status()
                assert got == BLOB_BYTES, got
                return qemu_cpu(pid) - a
            finally:
                t.close()
        g.run(f"head -c {BLOB_BYTES} /dev/urandom > /tmp/blob").check()
        moved: dict[tuple[str, str], list[float]] = {c: [] for c in CIPHERS}
        combos = [(h, k, "ecdsa") for h in HOST_KEYS for k in KEX]
        combos += [("ed25519", KEX[0], c) for c in ("ed25519", "rsa")]
        seen: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {c: [] for c in combos}
        for _ in range(args.runs):
            for combo in combos:
                seen[combo].append(connect(*combo))
            for cipher in CIPHERS:
                moved[cipher].append(transfer(*cipher))
    print(f"QEMU CPU seconds per connection (median of {args.runs}): key exchange with the "
          f"host key's signature, public-key authentication, one command")
    for (host_key, kex, client), runs in seen.items():
        med = [statistics.median(r[i] for r in runs) for i in range(3)]
        print(f"  host key {host_key:<8} {kex:<30} client {client:<8} "
              f"{med[0]:.3f}  {med[1]:.3f}  {med[2]:.3f}")
    print(f"QEMU CPU seconds for one command sending {BLOB_BYTES} bytes back "
          f"(median of {args.runs}; min-max)")
    for (cipher, mac), cpus in moved.items():
        print(f"  {cipher:<12} {mac:<14} {statistics.median(cpus):.3f}  "
              f"({min(cpus):.3f}-{max(cpus):.3f})")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
