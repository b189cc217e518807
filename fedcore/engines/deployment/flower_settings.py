"""The names and waits of fedcore's Flower runtime: supported Flower releases, poll and pull timings, task and app ids."""

from __future__ import annotations

#: Flower releases whose internals fedcore's Flower runtime was read from (version prefixes).
SUPPORTED_FLOWER = ("1.42.",)

#: Seconds an idle SuperNode waits between two pulls from the SuperLink (Flower: 3 s) while a
#: run is under way: within :data:`BUSY_FOR_S` of its last message.
IDLE_WAIT_S = 0.1
#: Seconds after a message during which the SuperNode and the worker poll quickly; after that,
#: between runs, they poll every :data:`RESTING_WAIT_S` (a resting site costs next to no CPU,
#: and its first message waits at most that long).
BUSY_FOR_S = 30.0
RESTING_WAIT_S = 1.0
#: Seconds the SuperNode waits between two looks for its ClientApp's reply (Flower: 0.5 s).
REPLY_WAIT_S = 0.02
#: Seconds between two task requests of the worker to its SuperNode (Flower's SuperExec: 1 s):
#: the first wait after a task; each empty request doubles it up to :data:`TASK_POLL_MAX_S`
#: (a round's messages come in bursts, and an idle worker should cost next to no CPU).
TASK_POLL_S = 0.02
TASK_POLL_MAX_S = 0.1

#: Object pulls (a message's arrays, once its header arrived) retry after this many seconds,
#: doubling up to :data:`PULL_BACKOFF_CAP_S` (Flower: 1 s doubling to 10 s). A message's header
#: is visible before its objects are (the SuperNode stores a message before it pulls the
#: objects; the SuperLink gets a reply before its objects), so every first pull fails and
#: Flower's backoff alone cost 1-7 s per message here.
PULL_INITIAL_BACKOFF_S = 0.02
PULL_BACKOFF_CAP_S = 0.2
#: Tries per object at the capped backoff: about 15 minutes, as long as a message may take.
PULL_MAX_TRIES = 5000

#: Where each process kind pulls objects: (module, function) patched by :func:`shorten_object_pulls`.
PULL_SITES: dict[str, tuple[tuple[str, str], ...]] = {
    "supernode": (("flwr.supernode.start_client_internal", "pull_objects"),),
    "worker": (("flwr.supernode.runtime.run_clientapp", "pull_and_inflate_object_from_tree"),),
    "serverapp": (("flwr.superlink.grid.http_grid", "pull_objects"),),
}
_PULL_PARAMS = ("initial_backoff", "backoff_cap", "max_tries_per_object")

#: The Flower waits :func:`patch_supernode_waits` replaces: Flower's value -> fedcore's.
_FLOWER_IDLE_WAIT = 3
_FLOWER_REPLY_WAIT = 0.5

#: ``publisher/name`` of the Flower app fed-coordinator submits (fedcore/cli/flowerapp).
FEDCORE_FAB_ID = "fedcore/fedcore-app"

#: The task type a ClientApp task has in Flower's Runtime API.
_CLIENT_APP_TASK = "flwr-clientapp"
