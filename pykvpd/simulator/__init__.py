"""A fake Hyper-V host and KVP kernel driver, so the whole exchange runs on any Linux machine.

``kernel.FakeKernel`` models the hv_utils driver behind a SOCK_SEQPACKET socket the daemon
connects to with ``--device``; ``host.Host`` is the management view (AddKvpItems, the
GuestParameters push, reading the guest's items); ``cli.main`` is ``pykvpd simulate``.
"""

from __future__ import annotations

from pykvpd.simulator.host import Host, HostError, Item, RegValue
from pykvpd.simulator.kernel import FakeKernel
from pykvpd.simulator.messages import HostReply, HostRequest

__all__ = ["FakeKernel", "Host", "HostError", "HostReply", "HostRequest", "Item", "RegValue"]
