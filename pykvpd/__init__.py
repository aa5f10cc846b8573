"""pykvpd: the Linux guest side of Hyper-V Key-Value Pair (KVP) Data Exchange.

Modules, in the order data flows through them:

* ``transport``  - moves whole 7432-byte messages to and from the kernel (device or socket).
* ``protocol``   - decodes a message into a request object and encodes replies (no I/O).
* ``handler``    - decides the reply for a request from the pools and intrinsic data.
* ``store``      - the pool files: format, locking, crash-safe writes, fsck.
* ``intrinsic``  - the Auto pool (pool 2) values the guest generates.
* ``netconfig``  - GET_IP_INFO / SET_IP_INFO.
* ``daemon``     - wires the above into the long-running service.
* ``cli``        - the ``kvp`` pool tool; ``simulator`` - a fake kernel and host.
"""

__version__ = "0.1.0"
