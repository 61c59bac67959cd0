import time, logging
import pytest
import test_data_integrity as t
from test_data_integrity import shard_dir, shard_copy  # noqa
from scaleprompt.data.loader import ShardLoader, DataError

@pytest.mark.parametrize("what", ["ensure1", "ensure2", "none"])
def test_probe(tmp_path, shard_copy, what):
    if what != "none":
        data = t.make_folder(tmp_path / "flowers")
        t.ensure(data, tmp_path / "cache")
        if what == "ensure2":
            (data / "test" / "green" / "000.png").unlink()
            t.ensure(data, tmp_path / "cache")
    path = shard_copy / "test-000002.tar"
    third = t.members(path)[3][0]
    with open(path, "r+b") as fh:
        fh.seek(third.offset + 20); fh.write(b"\x00garbage-bytes!!")
    t.sync_manifest_sha(shard_copy, "test-000002.tar")
    t0 = time.time()
    loader = ShardLoader(shard_copy, "test", batch_size=4, image_size=16, num_workers=1)
    with pytest.raises(DataError):
        list(loader)
    print("raised after", time.time() - t0)
    del loader
    print("del after", time.time() - t0)
