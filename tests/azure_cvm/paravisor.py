"""A stand-in for Azure's paravisor (the HCL) in front of a software TPM (swtpm).

On Azure, writing the vTPM's NV index 0x01400002 makes the paravisor produce
a fresh HCL report at 0x01400001. swtpm has no hook for that, so this program
sits between the TPM client and swtpm as a tpm2-tss ``cmd:`` TCTI: the client
(cmlfs, through tpm2-pytss) starts it per TPM context as
``cmd:python tests/azure_cvm/paravisor.py --swtpm HOST:PORT --kind snp --keys DIR --log F``,
and it forwards each TPM command to swtpm unchanged. When a TPM2_NV_Write to
0x01400002 succeeds, it writes the new HCL report on the same swtpm connection
*before* returning the write's response, so the report is there as soon as the
write returns (the real paravisor needs up to ~3 s, which the attester waits).

It is as strict as the paravisor is about the request: the write must be at
offset 0 and cover the whole index, the index must be 1 to 64 bytes with owner
read and write; otherwise no report is made (the client then reads a stale
one). The report carries the AK read from 0x81000003, user-data = the request
zero-padded to 64 bytes (uppercase hex), and a hardware report whose
report_data starts with SHA-256(variable data): an SNP report signed by the
test VCEK, or a TD report. It logs to ``--log`` (never to stderr, which is the
client's).

swtpm caps an NV index at 2 KiB (TPM2_PT_NV_INDEX_MAX), so the report index is
2048 bytes and the variable data leaves out the EK; Azure's index is 2600.

Written from kinvolk/azure-cvm-tooling ``az-cvm-vtpm/src/vtpm/mod.rs`` (the
request index ``INDEX_REPORT_DATA`` 0x01400002 written by ``write_nv_index``, the
3 s wait and the read of ``VTPM_HCL_REPORT_NV_INDEX`` 0x01400001 in
``get_report_with_report_data``, the AK at ``VTPM_AK_HANDLE`` 0x81000003) and
``az-cvm-vtpm/src/hcl/mod.rs`` (the report layout, read back by Trustee's
``deps/verifier/src/az_snp_vtpm`` and ``az_tdx_vtpm``).
"""

import argparse
import hashlib
import socket
import struct
import sys
from pathlib import Path

from tpm2_pytss import ESAPI, ESYS_TR, TPM2_ALG, TPM2B_NV_PUBLIC, TPMA_NV, TPMS_NV_PUBLIC, PyTCTI

if not __package__:  # run by path from a TCTI string: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.azure_cvm import reports
from tests.azure_cvm.chains import load_key

REQUEST_INDEX = 0x01400002
REPORT_INDEX = 0x01400001
AK_HANDLE = 0x81000003
REPORT_INDEX_SIZE = 2048
TPM2_CC_NV_WRITE = 0x137


class SocketTcti(PyTCTI):
    """A TCTI over an open swtpm data socket, for this program's own commands."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(max_size=4096)
        self.sock = sock

    def do_transmit(self, command: bytes) -> None:
        self.sock.sendall(command)

    def do_receive(self, timeout: int) -> bytes:
        return receive_response(self.sock)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            raise EOFError("swtpm closed the connection")
        data += piece
    return data


def receive_response(sock: socket.socket) -> bytes:
    header = _recv_exact(sock, 10)
    size = struct.unpack(">I", header[2:6])[0]
    return header + _recv_exact(sock, size - 10)


def _read_command(stream) -> bytes | None:
    header = stream.read(10)
    if len(header) < 10:
        return None
    size = struct.unpack(">I", header[2:6])[0]
    return header + stream.read(size - 10)


def _nv_write_target(command: bytes) -> tuple[int, bytes, int]:
    """(nvIndex, data, offset) of a TPM2_NV_Write command."""
    nv_index = struct.unpack_from(">I", command, 14)[0]
    auth_size = struct.unpack_from(">I", command, 18)[0]
    at = 22 + auth_size
    size = struct.unpack_from(">H", command, at)[0]
    data = command[at + 2 : at + 2 + size]
    offset = struct.unpack_from(">H", command, at + 2 + size)[0]
    return nv_index, data, offset


def write_report(ctx: ESAPI, kind: str, keys: Path, user_data: bytes) -> None:
    """Make an HCL report for ``user_data`` and store it at the report index."""
    ak = ctx.tr_from_tpmpublic(AK_HANDLE)
    public, _, _ = ctx.read_public(ak)
    variable = reports.var_data(bytes(public.publicArea.unique.rsa), user_data)
    bound = hashlib.sha256(variable).digest()
    if kind == "snp":
        hardware = reports.snp_report(bound, load_key(keys / "vcek.key"))
    else:
        hardware = reports.td_report(bound)
    report = reports.hcl_report(kind, hardware, variable).ljust(REPORT_INDEX_SIZE, b"\0")
    try:
        index = ctx.tr_from_tpmpublic(REPORT_INDEX)
    except Exception:
        info = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=REPORT_INDEX,
                nameAlg=TPM2_ALG.SHA256,
                attributes=TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD,
                dataSize=REPORT_INDEX_SIZE,
            )
        )
        index = ctx.nv_define_space(None, info, auth_handle=ESYS_TR.OWNER)
    for offset in range(0, len(report), 1024):
        ctx.nv_write(index, report[offset : offset + 1024], offset, auth_handle=ESYS_TR.OWNER)


def request_is_valid(ctx: ESAPI, data: bytes, offset: int) -> str | None:
    """None when the write is a report request the paravisor honours, else why not."""
    index = ctx.tr_from_tpmpublic(REQUEST_INDEX)
    public, _ = ctx.nv_read_public(index)
    attrs = public.nvPublic.attributes
    if offset != 0 or len(data) != public.nvPublic.dataSize:
        return "the write does not cover the whole index"
    if not 1 <= len(data) <= 64:
        return f"index is {len(data)} bytes (1 to 64)"
    if not (attrs & TPMA_NV.OWNERREAD and attrs & TPMA_NV.OWNERWRITE):
        return "index is not owner read/write"
    return None


def serve(sock: socket.socket, kind: str, keys: Path, log) -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    own = ESAPI(SocketTcti(sock))
    while (command := _read_command(stdin)) is not None:
        sock.sendall(command)
        response = receive_response(sock)
        cc = struct.unpack_from(">I", command, 6)[0]
        rc = struct.unpack_from(">I", response, 6)[0]
        if cc == TPM2_CC_NV_WRITE and rc == 0:
            nv_index, data, offset = _nv_write_target(command)
            if nv_index == REQUEST_INDEX:
                refusal = request_is_valid(own, data, offset)
                if refusal is None:
                    write_report(own, kind, keys, data)
                print(f"report request: {refusal or 'new report'}", file=log, flush=True)
        stdout.write(response)
        stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--swtpm", required=True)
    parser.add_argument("--kind", choices=["snp", "tdx"], required=True)
    parser.add_argument("--keys", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    host, port = args.swtpm.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock, open(args.log, "a") as log:
        serve(sock, args.kind, args.keys, log)


if __name__ == "__main__":
    main()
