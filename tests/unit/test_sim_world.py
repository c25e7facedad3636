"""The simulated world of ``dynacheck sim``: its clock, processes, TCP streams and disk."""

from __future__ import annotations

import random

from twisted.internet import protocol

from dynacheck.sim.disk import SimEngine
from dynacheck.sim.world import HostReactor, Network, Scheduler


class Recorder(protocol.Protocol):
    def __init__(self, log):
        self.log = log

    def connectionMade(self):  # noqa: N802
        self.log.append(("made",))

    def dataReceived(self, data):  # noqa: N802
        self.log.append(("data", data))

    def connectionLost(self, reason):  # noqa: N802
        self.log.append(("lost", reason.type.__name__))


class Factory(protocol.ClientFactory):
    def __init__(self, log):
        self.log, self.protocols = log, []

    def buildProtocol(self, addr):  # noqa: N802
        self.protocols.append(Recorder(self.log))
        return self.protocols[-1]

    def clientConnectionFailed(self, connector, reason):  # noqa: N802
        self.log.append(("failed", reason.type.__name__))


def world(seed=1):
    errors = []
    scheduler = Scheduler(on_error=errors.append)
    network = Network(scheduler, random.Random(seed))
    return scheduler, network, errors


def connected_pair(network, scheduler):
    server_log, client_log = [], []
    server, client = HostReactor(network, "10.0.0.1"), HostReactor(network, "10.0.0.2")
    server_factory = Factory(server_log)
    server.listenTCP(80, server_factory, interface="10.0.0.1")
    client_factory = Factory(client_log)
    client.connectTCP("10.0.0.1", 80, client_factory, timeout=2)
    scheduler.run_until(1.0)
    return server, client, server_factory, client_factory, server_log, client_log


def test_a_stream_keeps_its_order_whatever_each_segment_is_delayed():
    scheduler, network, errors = world()
    network.netem = (0.01, 0.01, 0.2)  # delays that alone would reorder, and losses
    network.nodes = {"10.0.0.1", "10.0.0.2"}
    _, _, server_factory, client_factory, server_log, _ = connected_pair(network, scheduler)
    for i in range(200):
        client_factory.protocols[0].transport.write(b"%d," % i)
    scheduler.run_until(60.0)
    received = b"".join(entry[1] for entry in server_log if entry[0] == "data")
    assert received == b"".join(b"%d," % i for i in range(200)) and errors == []


def test_a_partition_holds_what_crosses_it_until_it_heals_and_times_out_new_connections():
    scheduler, network, _ = world()
    _, client, server_factory, client_factory, server_log, client_log = connected_pair(network, scheduler)
    network.partition([("10.0.0.1", "10.0.0.2")])
    client_factory.protocols[0].transport.write(b"held")
    late = []
    client.connectTCP("10.0.0.1", 80, Factory(late), timeout=2)
    scheduler.run_until(scheduler.now + 10)
    assert ("data", b"held") not in server_log and late == [("failed", "TimeoutError")]
    network.heal()
    scheduler.run_until(scheduler.now + 1)
    assert ("data", b"held") in server_log


def test_a_connection_to_an_address_nobody_listens_on_is_refused():
    scheduler, network, _ = world()
    log = []
    HostReactor(network, "10.0.0.2").connectTCP("10.0.0.9", 80, Factory(log), timeout=2)
    scheduler.run_until(1.0)
    assert log == [("failed", "ConnectionRefusedError")]


def test_a_paused_process_fires_its_timers_only_once_it_resumes_and_they_stay_active_meanwhile():
    scheduler, network, _ = world()
    process = HostReactor(network, "10.0.0.1")
    fired = []
    timer = process.callLater(1.0, fired.append, "timer")
    process.pause()
    scheduler.run_until(5.0)
    assert fired == [] and timer.active()  # code that cancels its own pending timer still may
    process.resume()
    scheduler.run_until(5.1)
    assert fired == ["timer"] and not timer.active()


def test_a_killed_process_runs_nothing_more_and_its_peers_see_the_connection_lost():
    scheduler, network, _ = world()
    server, _, server_factory, _, server_log, client_log = connected_pair(network, scheduler)
    fired = []
    server.callLater(1.0, fired.append, "timer")
    server.kill()
    scheduler.run_until(scheduler.now + 5)
    assert fired == [] and ("lost", "ConnectionLost") in client_log
    assert ("lost", "ConnectionLost") not in server_log  # the dead process sees nothing


def test_a_crash_keeps_what_a_flush_made_durable_and_loses_the_rest():
    engine = SimEngine("i")
    engine.apply([(b"a", b"1")])
    engine.flush()
    engine.apply([(b"a", b"2"), (b"b", b"3")])
    engine.reserve_epochs(7)
    assert engine.crash() == 2
    assert engine.data == {b"a": b"1"} and engine.epoch == 7  # a reservation is a synchronous commit


def test_the_same_seed_gives_the_same_delivery_times_and_another_seed_other_ones():
    def arrivals(seed):
        scheduler, network, _ = world(seed)
        _, _, _, client_factory, server_log, _ = connected_pair(network, scheduler)
        times = []
        for _ in range(20):
            client_factory.protocols[0].transport.write(b"x")
            before = len(server_log)
            scheduler.run_until(scheduler.now + 1, lambda before=before: len(server_log) > before)
            times.append(scheduler.now)
        return times

    assert arrivals(3) == arrivals(3) != arrivals(4)


def test_a_connection_attempt_across_a_partition_that_heals_connects_at_the_next_syn():
    scheduler, network, _ = world()
    server_log, client_log = [], []
    HostReactor(network, "10.0.0.1").listenTCP(80, Factory(server_log), interface="10.0.0.1")
    network.partition([("10.0.0.1", "10.0.0.2")])
    HostReactor(network, "10.0.0.2").connectTCP("10.0.0.1", 80, Factory(client_log), timeout=5)
    scheduler.run_until(0.5)
    network.heal()
    scheduler.run_until(0.99)
    assert client_log == []  # the first SYN was lost; the next goes at 1 s
    scheduler.run_until(1.1)
    assert client_log == [("made",)]


def test_a_side_that_resets_across_a_partition_sends_nothing_more_and_its_peer_learns_it_on_writing():
    """What a partition holds is the sender's retransmission queue: a reset drops it, and the
    reset itself (sent once) is lost; after the heal the peer gets nothing until it writes, and
    then a reset."""
    scheduler, network, _ = world()
    _, _, server_factory, client_factory, server_log, client_log = connected_pair(network, scheduler)
    network.partition([("10.0.0.1", "10.0.0.2")])
    client_factory.protocols[0].transport.write(b"stale")
    scheduler.run_until(scheduler.now + 1)
    client_factory.protocols[0].transport.abortConnection()
    scheduler.run_until(scheduler.now + 10)
    network.heal()
    scheduler.run_until(scheduler.now + 1)
    assert ("data", b"stale") not in server_log and ("lost", "ConnectionLost") not in server_log
    server_factory.protocols[0].transport.write(b"anyone?")
    scheduler.run_until(scheduler.now + 1)
    assert server_log[-1] == ("lost", "ConnectionLost") and ("data", b"anyone?") not in client_log
