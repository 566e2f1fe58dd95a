"""memguard over ``rediss+sentinel://``: a TLS primary, a TLS replica and three sentinels that
speak TLS themselves, all real redis-server processes with certificates this test makes.

The URL names only the sentinels' TLS ports, so nothing here can work over plain TCP: the
sentinels are asked over TLS (the default of ``rediss+sentinel://``), and the master they name
is reached over TLS with the same CA and client certificate. The plain ports the servers also
keep are the test's own, to look at the state and to drive the failover.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
import redis
import trustme

from memguard import flags, process
from memguard.domain import events
from memguard.drill.localstack import RedisServer, free_port, wait_for

from .conftest import (
    a_401_forces_and_another_process_sees_it,
    make_settings,
    run_cli,
    the_cli_shows_the_force_and_clears_it,
    worker_and_beat_on_rabbitmq,
)

SERVICE = "mgtls"


@pytest.fixture
def tls_sentinels(tmp_path: Path) -> Iterator[SimpleNamespace]:
    ca = trustme.CA()
    names = ("ca.pem", "server.crt", "server.key", "client.crt", "client.key")
    files = {name: tmp_path / name for name in names}
    ca.cert_pem.write_to_path(str(files["ca.pem"]))
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(files["server.crt"]))
    server.private_key_pem.write_to_path(str(files["server.key"]))
    client = ca.issue_cert("memguard-client")
    client.cert_chain_pems[0].write_to_path(str(files["client.crt"]))
    client.private_key_pem.write_to_path(str(files["client.key"]))
    tls = ["--tls-cert-file", str(files["server.crt"]), "--tls-key-file", str(files["server.key"]),
           "--tls-ca-cert-file", str(files["ca.pem"]), "--tls-auth-clients", "optional",
           "--tls-replication", "yes"]
    primary_tls, replica_tls = free_port(), free_port()
    primary = RedisServer(None, "--tls-port", str(primary_tls), *tls).start()
    replica = RedisServer(None, "--tls-port", str(replica_tls), *tls,
                          "--replicaof", "127.0.0.1", str(primary_tls)).start()
    sentinels, sentinel_tls = [RedisServer() for _ in range(3)], [free_port() for _ in range(3)]
    for s, tls_port in zip(sentinels, sentinel_tls, strict=True):
        conf = Path(s.dir) / "sentinel.conf"
        conf.write_text(
            f"port {s.port}\nbind 127.0.0.1\ndir {s.dir}\nlogfile {s.dir}/log\ntls-port {tls_port}\n"
            f"tls-cert-file {files['server.crt']}\ntls-key-file {files['server.key']}\n"
            f"tls-ca-cert-file {files['ca.pem']}\ntls-auth-clients optional\ntls-replication yes\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_tls} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\nsentinel failover-timeout {SERVICE} 4000\n")
        s.proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def knows_replica(s: RedisServer) -> bool:
        try:
            return any(r.get("master-link-status") == "ok" for r in s.client().sentinel_slaves(SERVICE))
        except redis.RedisError:
            return False

    query = urlencode({"ssl_ca_certs": files["ca.pem"], "ssl_certfile": files["client.crt"],
                       "ssl_keyfile": files["client.key"]})
    hosts = ",".join(f"127.0.0.1:{port}" for port in sentinel_tls)
    plain_hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
    try:
        wait_for(lambda: all(knows_replica(s) for s in sentinels), 30, "the sentinels to see the TLS replica")
        yield SimpleNamespace(url=f"rediss+sentinel://{hosts}/{SERVICE}/0?{query}",
                              plain_sentinels=f"rediss+sentinel://{plain_hosts}/{SERVICE}/0?{query}"
                                              "&sentinel_ssl=false",
                              primary=primary, replica=replica, sentinels=sentinels,
                              servers={primary_tls: primary, replica_tls: replica})
    finally:
        for s in (*sentinels, replica, primary):
            s.close()


def master(group: SimpleNamespace) -> RedisServer:
    """The server the sentinels name as master now (read over a sentinel's plain port)."""
    _, port = group.sentinels[0].client().sentinel_get_master_addr_by_name(SERVICE)
    return group.servers[int(port)]


def test_reads_forces_the_cli_and_a_failover_work_through_tls_sentinels(tls_sentinels, stub):
    rt = process.configure(make_settings(tls_sentinels.url, stub))
    other = process.build(make_settings(tls_sentinels.url, stub), hooks=events.Hooks(), count_metrics=False)
    try:
        assert rt.watcher.wait_ready() and other.watcher.wait_ready(), "views over TLS through the sentinels"
        a_401_forces_and_another_process_sees_it(rt, other, stub)
        assert tls_sentinels.primary.client().exists("mem:mode:forced:v1"), "written to the TLS master"
        the_cli_shows_the_force_and_clears_it(tls_sentinels.url, other)
        # The sentinels asked over plain TCP when a deployment's sentinels do not speak TLS.
        assert run_cli(tls_sentinels.plain_sentinels, "status").returncode == 0

        old = master(tls_sentinels)
        wait_for(lambda: bool(tls_sentinels.sentinels[0].client().sentinel_failover(SERVICE)), 20,
                 "the sentinels to accept SENTINEL FAILOVER", interval=0.5)
        wait_for(lambda: master(tls_sentinels) is not old, 20, "the sentinels to promote the TLS replica")
        new = master(tls_sentinels)
        wait_for(lambda: new.client().role()[0] == "master", 20, "the new master to take writes")

        # Heard over TLS from a sentinel (+switch-master): both processes follow the new master.
        def forced_on_new_master_and_seen() -> bool:
            try:
                flags.force_write_only("manual_ops", 60)
            except Exception:
                return False
            return new.client().exists("mem:mode:forced:v1") == 1 and \
                (v := other.view.current) is not None and v.record is not None
        wait_for(forced_on_new_master_and_seen, 20, "a force on the new master, seen by the other process")
    finally:
        other.close()


def test_the_beats_probe_restores_through_tls_sentinels(tls_sentinels, stub, tmp_path):
    with worker_and_beat_on_rabbitmq(tls_sentinels.url, stub, tmp_path, "tls-sentinel"):
        process.configure(make_settings(tls_sentinels.url, stub, ramp_seconds=0))
        flags.force_write_only("manual_ops", 2)
        wait_for(lambda: flags.get_forced_mode() is None, 30, "the beat's probe to restore, over TLS")
        keys = list(tls_sentinels.primary.client().scan_iter("redbeat:*"))
        assert keys, "RedBeat keeps its schedule on the TLS master, found through the sentinels"


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A three-master Redis Cluster that speaks TLS to clients and on its bus (``tls-cluster``),
    so the nodes it announces are its TLS ports."""
    ca = trustme.CA()
    for name, blob in (("ca.pem", ca.cert_pem),):
        blob.write_to_path(str(tmp_path / name))
    server, client = ca.issue_cert("localhost", "127.0.0.1"), ca.issue_cert("memguard-client")
    for cert, name in ((server, "server"), (client, "client")):
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.crt"))
        cert.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
    tls_ports = [free_port() for _ in range(3)]
    nodes = [RedisServer(None, "--tls-port", str(port), "--tls-cert-file", str(tmp_path / "server.crt"),
                         "--tls-key-file", str(tmp_path / "server.key"), "--tls-ca-cert-file",
                         str(tmp_path / "ca.pem"), "--tls-auth-clients", "optional", "--tls-cluster", "yes",
                         "--tls-replication", "yes", "--cluster-enabled", "yes",
                         "--cluster-node-timeout", "2000", "--cluster-port", str(free_port()))
             for port in tls_ports]
    for n in nodes:
        n.args += ("--cluster-config-file", str(Path(n.dir) / "nodes.conf"))
        n.start()
    try:
        subprocess.run(["redis-cli", "--tls", "--cacert", str(tmp_path / "ca.pem"), "--cert",
                        str(tmp_path / "client.crt"), "--key", str(tmp_path / "client.key"), "--cluster",
                        "create", *(f"127.0.0.1:{p}" for p in tls_ports), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)

        def ok() -> bool:
            try:
                return all(n.client().cluster("INFO").get("cluster_state") == "ok" for n in nodes)
            except redis.RedisError:
                return False

        wait_for(ok, 20, "the TLS cluster to report cluster_state:ok")
        query = urlencode({"ssl_ca_certs": tmp_path / "ca.pem", "ssl_certfile": tmp_path / "client.crt",
                           "ssl_keyfile": tmp_path / "client.key"})
        hosts = ",".join(f"127.0.0.1:{p}" for p in tls_ports)
        yield SimpleNamespace(url=f"rediss+cluster://{hosts}?{query}", nodes=nodes)
    finally:
        for n in nodes:
            n.close()


def test_reads_forces_and_the_cli_work_on_a_tls_cluster(tls_cluster, stub):
    rt = process.configure(make_settings(tls_cluster.url, stub))
    other = process.build(make_settings(tls_cluster.url, stub), hooks=events.Hooks(), count_metrics=False)
    try:
        assert rt.watcher.wait_ready() and other.watcher.wait_ready(), "views over TLS on the cluster"
        a_401_forces_and_another_process_sees_it(rt, other, stub)
        assert sum(n.client().dbsize() for n in tls_cluster.nodes) > 0, "the state is on the cluster's nodes"
        the_cli_shows_the_force_and_clears_it(tls_cluster.url, other)
    finally:
        other.close()
