import subprocess

from pipeline.common import provenance


def test_code_commit_is_this_checkouts_head():
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    commit = provenance.code_commit()
    assert commit is not None and commit.split("-dirty")[0] == head


def test_record_names_the_software():
    r = provenance.record()
    assert set(r) >= {"code_commit", "package_version", "python", "torch", "numpy"}
    assert r["torch"].split("+")[0].count(".") == 2
