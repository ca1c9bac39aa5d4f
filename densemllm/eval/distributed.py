"""Scale-out on Ray (the optional ``ray`` extra): N actors, each building its predictor
once (loading the checkpoint from the path, which must exist on every node), take images
from the driver; predictions come back to the driver, which checks them and writes the
store, exactly as in one process. Pointing it at a cluster: ``ray_address="auto"`` on a
node of the cluster, or ``"ray://HEAD:10001"`` (Ray Client) from outside; see
docs/evaluation.md."""
from __future__ import annotations

import os


class _Worker:
    def __init__(self, spec, threads):
        if spec.model_path is not None and threads:
            spec.load_kwargs.setdefault("threads", threads)
        self.predict = spec.build()

    def run(self, image, sample):
        return self.predict(image, sample)


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError("backend='ray' needs Ray: pip install 'densemllm[ray]'") from e
    return ray


def init_local(ray, workers):
    """A local Ray 'cluster' sized for this job: one CPU per worker, a small object
    store, no dashboard (start-up on small machines is dominated by these)."""
    ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=96 << 20,
             log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")  # a local cluster talks over loopback only


def run_ray(spec, ds, items, workers, address, sample_dict):
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            init_local(ray, workers)
        started = True
    try:
        threads = max(1, (os.cpu_count() or 1) // workers) if not address else None
        Actor = ray.remote(num_cpus=1)(_Worker)
        actors = [Actor.remote(spec, threads) for _ in range(workers)]
        idle, pending = list(actors), {}
        exhausted = False
        while True:
            while idle and not exhausted:
                try:
                    s, img, gt = next(items)
                except StopIteration:
                    exhausted = True
                    break
                a = idle.pop()
                pending[a.run.remote(img, sample_dict(ds, s))] = (a, s, gt)
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                a, s, gt = pending.pop(ref)
                idle.append(a)
                yield s, gt, ray.get(ref)
        for a in actors:
            ray.kill(a)
    finally:
        if started:
            ray.shutdown()
