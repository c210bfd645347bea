"""A CI-sized mutation campaign (tests/hardening/mutation.py; the full run is documented in
docs/SECURITY.md): every byte read through the mount is the source or EIO."""

import pytest

from tests.hardening.mutation import BLOB_KINDS, MANIFEST_KINDS, RECORD_KINDS, run_campaign

pytestmark = [pytest.mark.fuse, pytest.mark.hardening]

MUTATIONS = 1000


@pytest.mark.expect_log("event=(read_failed|integrity_failed|chunk_rejected)")
# Each mount closes its files and unmounts at once (force_unmount): the kernel aborts the
# connection on unmount, ending a RELEASE still unanswered, and pyfuse3 logs the ENOENT of the
# daemon's late answer to it.
@pytest.mark.expect_log(r"fuse_release\(\): fuse_reply_\* failed with No such file", optional=True)
def test_mutation_campaign_never_serves_a_wrong_byte(tmp_path):
    report = run_campaign(tmp_path / "campaign", MUTATIONS, seed=20261127)
    print(report.summary())
    assert report.mutations == MUTATIONS
    assert set(report.kinds) == {*RECORD_KINDS, *BLOB_KINDS, *MANIFEST_KINDS}
    assert report.wrong_bytes == 0
    assert report.undetected == 0, "a damaged range read back intact: the check was not real"
    assert report.other_errors == []
    assert report.refused_mounts >= len(MANIFEST_KINDS) - 1  # all but the replaced manifest
    assert report.eio_reads >= MUTATIONS  # every store mutation made at least one read fail
    assert report.correct_reads > MUTATIONS // 2  # intact neighbours kept reading correctly
