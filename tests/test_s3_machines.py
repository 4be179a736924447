"""Several machines sharing an S3 bucket for the images (moto's S3 server, a process of its own): the bot answers
/imagine with the PNG its worker put in the bucket; a ``python -m worker`` process whose network to PostgreSQL is
cut in the middle of a batch keeps the batch's result, reconnects, and the result is posted exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from pathlib import Path

from bench.crash_audit import Members, answers, audit
from emulated_bot import WorkerProcess, bot_config_data, running_bot
from services.config import build_config
from storage import Database, JobQueue
from tests.test_crash_recovery import until
from tests.test_storage_support import create_pg_database, drop_pg_database


async def test_imagine_posts_the_png_its_worker_put_in_the_bucket(emulator, tmp_path, tiny_model_dir, s3_server, s3_images):
    data_dir = tmp_path / "data"
    config = build_config(bot_config_data(emulator, data_dir, tiny_model_dir, storage=s3_images), env={})
    async with running_bot(emulator, config) as env:
        members = Members.create(emulator, 1)
        job_id = await members.imagine(members.users[0])
        assert job_id is not None, members.refused
        [posted] = await until(lambda: answers(emulator, job_id, members.users[0]), "the result", timeout=60)
        job = await env.services.queue.get(job_id)
        [image] = job.result["images"]
        data = await emulator.read_attachment(posted.attachments[0])
        bucket, prefix = env.services.store.bucket, env.services.store.prefix
    # the posted bytes are the bucket's object under its content address, and nothing went to the local disk
    assert image["key"] == f"{hashlib.sha256(data).hexdigest()[:2]}/{hashlib.sha256(data).hexdigest()}.png"
    assert s3_server.keys(bucket) == [f"{prefix}/{image['key']}"]
    assert s3_server.client().get_object(Bucket=bucket, Key=f"{prefix}/{image['key']}")["Body"].read() == data
    assert not (data_dir / "images").exists()


class CuttableRoute:
    """A TCP route to PostgreSQL that the test can cut (every open connection reset, new ones refused) and
    restore on the same port: the network between a GPU machine and the database going away."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = _free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        self.server.close()
        for writer in list(self.writers):
            with contextlib.suppress(OSError):
                writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        pipes = [asyncio.ensure_future(_pipe(reader, up_writer)), asyncio.ensure_future(_pipe(up_reader, writer))]
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)  # one side closed: close the other
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        for w in (writer, up_writer):
            self.writers.discard(w)
            w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_worker_cut_from_the_database_mid_batch_reconnects_and_its_result_is_posted_once(
    emulator, tmp_path, tiny_model_dir, s3_server, s3_images, monkeypatch
):
    url = await create_pg_database()
    route = CuttableRoute(("127.0.0.1", 5432))
    await route.open()
    data = bot_config_data(
        emulator, tmp_path / "data", tiny_model_dir,
        storage={"url": url, **s3_images}, worker={"embedded": False, "lease_s": 30.0},
    )  # fmt: skip
    # the GPU machine reaches the database through the route, and the bucket through the AWS_* variables alone
    s3 = {key: value for key, value in s3_images.items() if key == "images"}
    # and leaves the sizes to its model (config.toml's max_area = 0): it must still claim the bot's jobs
    worker_data = {**data, "storage": {**data["storage"], "url": url.replace(":5432/", f":{route.port}/"), **s3},
                   "generation": {**data["generation"], "max_area": 0}}  # fmt: skip
    assert f":{route.port}/" in worker_data["storage"]["url"]
    for var, value in (("AWS_ENDPOINT_URL", s3_images["s3_endpoint"]), ("AWS_ALLOW_HTTP", "true"),
                       ("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)  # fmt: skip
    worker = WorkerProcess(tmp_path, worker_data, "default", "gpu1")
    queue = JobQueue(Database(url))
    try:
        async with running_bot(emulator, build_config(data, env={})) as env:
            worker.start()
            await until(lambda: _remote_workers(queue), "the worker to register", timeout=180)
            members = Members.create(emulator, 1)
            job_id = await members.imagine(members.users[0], steps=40)
            assert job_id is not None, members.refused
            await until(lambda: _running(queue, job_id), "the worker to start the batch", timeout=60, every=0.02)
            await route.cut()
            # the batch ends with the database out of reach: the worker holds the result and keeps trying
            log = Path(worker.log)
            await until(lambda: "the database is unreachable" in log.read_text(), "the finished batch to wait", timeout=120)
            job = await queue.get(job_id)
            assert job.status == "running" and job.answered_at is None  # the result waits on the GPU machine
            assert answers(emulator, job_id, members.users[0]) == []
            cut_at = route.connections
            await route.open()
            await until(lambda: answers(emulator, job_id, members.users[0]), "the result", timeout=60)
            await asyncio.sleep(1.0)  # a second answer would come now
            result = await audit(emulator, url, members)
            assert result["problems"] == [] and result["statuses"] == {"done": 1}, result
            job = await queue.get(job_id)
            assert job.attempts == 1 and f"-{worker.proc.pid}-" in job.result["worker"]  # not run again
            assert route.connections > cut_at  # the worker connected anew
            [image] = job.result["images"]
            assert f"{env.services.store.prefix}/{image['key']}" in s3_server.keys(env.services.store.bucket)
    finally:
        worker.signal(9)
        await route.cut()
        await queue.db.close()
        await drop_pg_database(url)


async def _remote_workers(queue: JobQueue) -> bool:
    return any(w.kind == "remote" for w in await queue.workers())


async def _running(queue: JobQueue, job_id: int) -> bool:
    return (await queue.get(job_id)).status == "running"
