"""The peer allocators the Python benchmarks preload, and how they set up a
child: shared by bench_preload.py and workloads.py (both copied next to this
file in the build tree)."""
import os

PEERS = [("jemalloc", "libjemalloc.so.2"), ("mimalloc", "libmimalloc.so.2"),
         ("tcmalloc", "libtcmalloc_minimal.so.4")]


def find_lib(name):
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib", "/lib/x86_64-linux-gnu"):
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    return None


def child_env(preload, extra_env=None):
    """This process's environment with LD_PRELOAD set (or cleared) for a child."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    if extra_env:
        env.update(extra_env)
    return env
