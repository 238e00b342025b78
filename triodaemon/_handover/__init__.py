"""Handing a daemon's listening sockets and live connections to a new process.

A new process (the *taker*) takes over from a running one (the *giver*): the
listening sockets move over a Unix stream socket as ``SCM_RIGHTS`` descriptors
(the same sockets, so their accept queues and Unix socket files never go
away), then every connection that owes its client nothing moves too, with the
bytes it had read but not yet framed, so its conversation carries on in the
new process. The giver exits once it has nothing left.

The channel is a control connection (``triodaemon --takeover PATH`` connects to
the giver's control socket) or a socketpair the giver made when it started its
successor itself (SIGHUP, ``ctl upgrade``). It begins as the control protocol:
the taker asks ``{"command": "takeover", "versions": [1]}`` and the giver
answers with the version both speak, or an error (no common version, a drain
or another upgrade under way). From there on it carries messages of this
module, strictly in turn (each side waits for the other's answer), which is
what ties the descriptors to their message: each message is a 4-byte length,
a JSON header, and ``header["blob"]`` raw bytes, its descriptors riding on its
first byte. Version 1::

    taker                                   giver
      | hello {pid, framing, handler,  -->    |
      |        migrate, workers}              | (what it takes: connections itself,
      |                                       |  and/or its workers the old workers')
      |  <-- listeners {pid, listeners,       | the taker adopts them and accepts
      |            workers} + fds             |
      | ready {}                       -->    | the giver stops accepting; the
      |                                       | socket files are the taker's now
      |  <-- connections {[...]} + fds + blob | (repeated: batches of connections
      | adopted {count}                -->    |  at a frame boundary)
      |  <-- done {handed, left}              | the giver drains what is left, exits

Either side may send ``error {error}`` instead of its next message: the handover
is called off. Before ``ready`` it can fail without a trace: the giver never
stopped accepting, and the socket files stay its own. A batch belongs to the
giver until the taker answers ``adopted``: if the taker dies first, those
connections carry on in the giver (nothing was read from them in between),
which accepts again. A supervisor (``--workers``) hands over no connection
itself: its ``workers`` say where each of its workers hands its own over, to a
taker whose hello says it has workers of its own; to any other, they finish there.

The parts, after cloudflare's tableflip (parent, child and descriptors apart),
and none of them inherited by what they serve:

- :mod:`.wire`: the messages, their limits and the channel that carries them;
- :mod:`.host`: the little a process offers the handover (a :class:`~triodaemon.Daemon`
  or a supervisor of workers implements it; neither imports this package);
- :mod:`.giver`: the old process's side; :mod:`.migration`: its connections, moved
  at frame boundaries through each connection's park and resume;
- :mod:`.taker`: the new process's side;
- :mod:`.upgrade`: an upgrade that starts its own new process.
"""
