"""Redis "off the box" for the tests: a throwaway CA, redis-server with TLS and
ACL users, primaries with replicas and redis-sentinel, all on the loopback
aliases 127.0.0.2 and 127.0.0.3 with ports from 16000-16999. Every process
started here is stopped by the same object that started it.
"""

import itertools
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from conftest import require, run

HOST_A = "127.0.0.2"
HOST_B = "127.0.0.3"
# Ports this module may hand out; each one is checked free on its address first.
_PORTS = itertools.count(16000 + (os.getpid() % 50) * 16)


def free_port(host):
    for port in _PORTS:
        if port > 16999:
            break
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) != 0:
                try:
                    sock.close()
                    with socket.socket() as probe:
                        probe.bind((host, port))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no free port in 16000-16999")


def make_ca(directory, name="test-ca", hosts=(HOST_A, HOST_B)):
    """A CA and one server certificate signed by it for the given IPs: (ca.pem, cert.pem, key.pem)."""
    require("openssl")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_pem = d / f"{name}.key", d / f"{name}.pem"
    key, csr, cert = d / f"{name}-server.key", d / f"{name}-server.csr", d / f"{name}-server.pem"
    openssl = ["openssl"]
    run([*openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-keyout", ca_key, "-out", ca_pem], d)  # fmt: skip
    run([*openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=redis", "-keyout", key, "-out", csr], d)
    san = d / f"{name}-san.cnf"
    san.write_text("subjectAltName=" + ",".join(f"IP:{h}" for h in hosts) + "\n")
    run([*openssl, "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
         "-extfile", san, "-out", cert], d)  # fmt: skip
    key.chmod(0o644)  # redis-server may run as another user than the one that made it
    return ca_pem, cert, key


class RedisProcess:
    """One redis-server (or redis-sentinel) process that the test started."""

    def __init__(self, directory, host, args, name, sentinel=False):
        self.host, self.port, self.name = host, free_port(host), name
        self.dir = Path(directory) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "redis.log"
        self.args = args
        self.sentinel = sentinel
        self.process = None
        self.start()

    def start(self):
        binary = require("redis-server")
        base = ["--bind", self.host, "--dir", self.dir, "--logfile", self.log, "--save", "", "--appendonly", "no"]
        if self.sentinel:
            conf = self.dir / "sentinel.conf"
            if not conf.exists():
                conf.write_text("\n".join(self.args) + "\n")
            command = [binary, conf, "--sentinel", "--port", self.port, "--bind", self.host, "--dir", self.dir,
                       "--logfile", self.log]  # fmt: skip
        else:
            command = [binary, "--port", self.port, *base, *self.args]
        self.process = subprocess.Popen([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def kill(self, sig=signal.SIGKILL):
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def stop(self):
        self.kill(signal.SIGTERM)

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_until(check, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (redis.RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


class TlsRedis(RedisProcess):
    """redis-server with only a TLS listener and one ACL user (the default user off)."""

    def __init__(self, directory, host, name, ca, cert, key, user, password):
        self.user, self.password, self.ca = user, password, ca
        args = ["--port", "0", "--tls-port", "PORT", "--tls-cert-file", cert, "--tls-key-file", key,
                "--tls-ca-cert-file", ca, "--tls-auth-clients", "no",
                "--user", "default", "off", "--user", user, "on", f">{password}", "~*", "&*", "+@all"]  # fmt: skip
        self._tls_args = args
        super().__init__(directory, host, [], name)
        wait_until(lambda: self.client().ping(), 10, f"{name} on {host}:{self.port} (TLS)")

    def start(self):
        binary = require("redis-server")
        args = [self.port if a == "PORT" else a for a in self._tls_args]
        command = [binary, "--bind", self.host, "--dir", self.dir, "--logfile", self.log, "--save", "",
                   "--appendonly", "no", *args]  # fmt: skip
        self.process = subprocess.Popen([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def url(self, db=0, password=None, scheme="rediss"):
        return f"{scheme}://{self.user}:{password or self.password}@{self.host}:{self.port}/{db}"

    def client(self):
        return redis.Redis.from_url(self.url(), ssl_ca_certs=str(self.ca), socket_timeout=2)


class SentinelGroup:
    """Primaries with one replica each and three sentinels, on 127.0.0.2 and 127.0.0.3.

    services: {name: extra redis-server args}. Each primary is on HOST_A and
    its replica on HOST_B; the sentinels are on A, B and A. Each node
    announces its own address: the aliases all reach one machine, and without
    that the replicas would be reported as 127.0.0.1 (DESIGN.md).
    """

    def __init__(self, directory, services, down_after_ms=1000):
        self.directory = Path(directory)
        self.nodes = {}
        for service, extra in services.items():
            primary = RedisProcess(directory, HOST_A, ["--replica-announce-ip", HOST_A, *extra], f"{service}-a")
            wait_until(lambda p=primary: self.client(p).ping(), 10, f"{service} primary")
            replica = RedisProcess(
                directory,
                HOST_B,
                ["--replica-announce-ip", HOST_B, "--replicaof", HOST_A, str(primary.port), *extra],
                f"{service}-b",
            )
            self.nodes[service] = [primary, replica]
        self.sentinels = []
        for index, host in enumerate((HOST_A, HOST_B, HOST_A)):
            lines = [f"sentinel announce-ip {host}"]
            for service, (primary, _) in self.nodes.items():
                lines += [
                    f"sentinel monitor {service} {primary.host} {primary.port} 2",
                    f"sentinel down-after-milliseconds {service} {down_after_ms}",
                    f"sentinel failover-timeout {service} 10000",
                    f"sentinel parallel-syncs {service} 1",
                ]
            self.sentinels.append(RedisProcess(directory, host, lines, f"sentinel-{index}", sentinel=True))
        self.wait_ready()

    def client(self, node):
        return redis.Redis(host=node.host, port=node.port, socket_timeout=2)

    def sentinel_client(self, index=0):
        node = self.sentinels[index]
        return redis.Redis(host=node.host, port=node.port, socket_timeout=2, decode_responses=True)

    def env_value(self):
        return ",".join(f"{s.host}:{s.port}" for s in self.sentinels)

    def primary_address(self, service):
        return tuple(self.sentinel_client().sentinel_get_master_addr_by_name(service))

    def node_at(self, address):
        host, port = address
        return next(n for ns in self.nodes.values() for n in ns if n.host == host and n.port == int(port))

    def wait_ready(self, timeout=30):
        """Every sentinel knows every primary, a healthy replica that is in sync, and the two other sentinels."""

        def ready():
            for index in range(len(self.sentinels)):
                client = self.sentinel_client(index)
                for service in self.nodes:
                    master = client.sentinel_master(service)
                    if not master.get("is_master") or master.get("is_sdown") or int(master["num-other-sentinels"]) < 2:
                        return False
                    replicas = client.sentinel_slaves(service)
                    good = [r for r in replicas if not r.get("is_sdown") and r.get("master-link-status") == "ok"]
                    if not good:
                        return False
            return True

        wait_until(ready, timeout, "sentinels see every primary with an in-sync replica and each other")

    def stop(self):
        for node in [*self.sentinels, *(n for ns in self.nodes.values() for n in ns)]:
            node.stop()


def wait_in_sync(group, service, timeout=30):
    """Every replica of the service's current primary is linked and caught up, and the sentinels know it."""
    primary = group.node_at(group.primary_address(service))

    def synced():
        info = group.client(primary).info("replication")
        if info["role"] != "master" or info["connected_slaves"] < 1:
            return False
        replicas = [info[k] for k in info if k.startswith("slave") and isinstance(info[k], dict)]
        offset = info["master_repl_offset"]
        return all(r["state"] == "online" and r["offset"] >= offset - 1000 for r in replicas) and replicas

    wait_until(synced, timeout, f"{service}: the replica in sync with {primary.host}:{primary.port}")
    group.wait_ready(timeout)
    return primary
