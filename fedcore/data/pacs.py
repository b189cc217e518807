"""Pull studies from a hospital PACS over DICOM networking: C-FIND, then C-GET or C-MOVE.

A site names its PACS in its config (:class:`PacsSpec`: host, port, AE titles, method);
:func:`find_studies` queries it at STUDY level (Study Root), :func:`retrieve_study` fetches one
study into ``out_dir/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` and
:func:`pull` does both for every study matching the configured query. Instances are written
as received (file meta + the dataset's bytes, never re-encoded), so compressed pixel data
stays byte-identical to what the PACS holds.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE, SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import AllStoragePresentationContexts, build_role
from pynetdicom.status import (
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from fedcore.config import PacsSpec, check_query_keys
from fedcore.storage import atomic_write_bytes

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# Study Root Query/Retrieve information models (PS3.4 C.6.2)
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
STUDY_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")
STUDY_ROOT_GET = UID("1.2.840.10008.5.1.4.1.2.2.3")

# Storage SOP classes fedcore accepts as C-GET SCP. Image classes get one presentation context
# per transfer syntax, so that the PACS can send each instance as stored instead of
# transcoding it (or failing when it cannot); the others get the uncompressed syntaxes only.
_UNCOMPRESSED = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.ExplicitVRBigEndian]
_COMPRESSED = [
    uid.JPEGBaseline8Bit,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
]
_IMAGE_CLASSES = [
    uid.CTImageStorage,
    uid.EnhancedCTImageStorage,
    uid.MRImageStorage,
    uid.EnhancedMRImageStorage,
    uid.PositronEmissionTomographyImageStorage,
    uid.NuclearMedicineImageStorage,
    uid.ComputedRadiographyImageStorage,
    uid.DigitalXRayImageStorageForPresentation,
    uid.DigitalMammographyXRayImageStorageForPresentation,
    uid.UltrasoundImageStorage,
    uid.UltrasoundMultiFrameImageStorage,
    uid.SecondaryCaptureImageStorage,
    uid.XRayAngiographicImageStorage,
    uid.RTImageStorage,
]
_OLDER_JPEG_CLASSES = [uid.CTImageStorage, uid.MRImageStorage]  # older scanners' JPEG processes
_PLAIN_CLASSES = [
    uid.LegacyConvertedEnhancedCTImageStorage,
    uid.EnhancedPETImageStorage,
    uid.DigitalXRayImageStorageForProcessing,
    uid.MultiFrameSingleBitSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
    uid.RTDoseStorage,
    uid.RTStructureSetStorage,
    uid.RTPlanStorage,
    uid.SegmentationStorage,
    uid.EncapsulatedPDFStorage,
    uid.BasicTextSRStorage,
    uid.EnhancedSRStorage,
    uid.ComprehensiveSRStorage,
    uid.KeyObjectSelectionDocumentStorage,
    uid.GrayscaleSoftcopyPresentationStateStorage,
]


def get_storage_contexts() -> list[tuple[UID, list[UID]]]:
    """The (SOP class, transfer syntaxes) presentation contexts fedcore proposes for C-GET.

    Returns:
        One entry per presentation context; together with the Query/Retrieve context they
        stay within the 128 contexts one association may propose.
    """
    contexts: list[tuple[UID, list[UID]]] = []
    for sop in _IMAGE_CLASSES:
        contexts.append((UID(sop), list(_UNCOMPRESSED)))
        contexts.extend((UID(sop), [ts]) for ts in _COMPRESSED)
    for sop in _OLDER_JPEG_CLASSES:
        contexts.extend((UID(sop), [ts]) for ts in (uid.JPEGExtended12Bit, uid.JPEGLossless))
    contexts.extend((UID(sop), list(_UNCOMPRESSED)) for sop in _PLAIN_CLASSES)
    return contexts


class PacsError(RuntimeError):
    """A PACS query or retrieve that failed; the message names the PACS and the cause.

    Attributes:
        received: files written before the failure; they are kept on disk.
    """

    def __init__(self, message: str, received: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.received: list[Path] = list(received)


@dataclass(frozen=True)
class StudyInfo:
    """One study as the PACS describes it in a C-FIND response."""

    study_uid: str
    patient_id: str
    study_date: str
    modalities: list[str]
    series_count: int | None


# --------------------------------------------------------------------------- association


def _make_ae(spec: PacsSpec) -> AE:
    ae = AE(ae_title=spec.calling_ae)
    ae.connection_timeout = spec.timeout_s
    ae.acse_timeout = spec.timeout_s
    ae.dimse_timeout = spec.timeout_s
    ae.network_timeout = spec.timeout_s
    return ae


def _connect_error(host: str, port: int, timeout: float) -> str:
    """Why a TCP connection to ``host:port`` fails, or '' when it now succeeds."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 5.0)):
            return ""
    except OSError as exc:
        return str(exc) or type(exc).__name__


@contextmanager
def _associate(ae: AE, spec: PacsSpec, service: str, **kwargs: Any) -> Iterator[Association]:
    """An established association with the PACS, released (or aborted) on exit."""
    logger.debug("associating with %s for %s", spec.describe(), service)
    began = time.monotonic()
    assoc = ae.associate(spec.host, spec.port, ae_title=spec.called_ae, **kwargs)
    if not assoc.is_established:
        raise PacsError(_association_failure(assoc, spec, service, time.monotonic() - began))
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        if assoc.is_established:  # release not answered
            assoc.abort()


def _late_answer(assoc: Association) -> A_ASSOCIATE | None:
    """An A-ASSOCIATE answer the peer sent but pynetdicom did not act on.

    A PACS that rejects an association often closes the connection at once; pynetdicom
    (3.0) may then see the socket closed before it reads the rejection, abort, and leave
    the A-ASSOCIATE-RJ in its DUL queue. Reading it back keeps the PACS's reason.
    """
    queue = getattr(assoc.dul, "to_user_queue", None)
    while queue is not None:
        try:
            item = queue.get(block=False)
        except Empty:
            return None
        if isinstance(item, A_ASSOCIATE) and item.result is not None:
            logger.debug("association answer read back after the connection closed")
            return item
    return None


def _association_failure(assoc: Association, spec: PacsSpec, service: str, elapsed_s: float) -> str:
    hint = (
        f"check that the PACS registers calling AE {spec.calling_ae!r} (and this machine's "
        f"address) and that its AE title is {spec.called_ae!r}"
    )
    answer = assoc.acceptor.primitive or _late_answer(assoc)
    if answer is not None and answer.result in (0x01, 0x02):
        return (
            f"{spec.describe()} rejected the association for {service}: {answer.result_str}, "
            f"source {answer.source_str}, reason {answer.reason_str!r}; {hint}"
        )
    if answer is not None and answer.result == 0 and not assoc.accepted_contexts:
        return (
            f"{spec.describe()} accepted the association but none of the presentation contexts "
            f"proposed for {service}; check that the PACS supports {service} "
            "(Study Root Query/Retrieve) for this AE"
        )
    if answer is None:
        cause = _connect_error(spec.host, spec.port, spec.timeout_s)
        if cause:
            return (
                f"cannot connect to {spec.describe()} for {service}: {cause}; check host and "
                "port in the site config and that the PACS is running"
            )
        if elapsed_s >= 0.9 * spec.timeout_s:
            return (
                f"{spec.describe()} did not answer the association request for {service} "
                f"within {spec.timeout_s:g} s; check that {spec.host}:{spec.port} is a DICOM "
                "port, or raise timeout_s"
            )
        return (
            f"{spec.describe()} closed the connection without answering the association "
            f"request for {service}; {hint}"
        )
    return f"{spec.describe()} aborted the association for {service}; {hint}"


def _describe_status(status: Dataset, table: dict[int, tuple[str, str]]) -> str:
    code = int(status.Status)
    category, text = table.get(code, (code_to_category(code), ""))
    out = f"0x{code:04X} ({category}{': ' + text if text else ''})"
    comment = status.get("ErrorComment")
    if comment:
        out += f", PACS says {str(comment)!r}"
    return out


def _identifier(keys: dict[str, str], level: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# --------------------------------------------------------------------------- C-FIND


def find_studies(spec: PacsSpec, **keys: str) -> list[StudyInfo]:
    """Query the PACS for studies (C-FIND, Study Root information model, STUDY level).

    Args:
        spec: the PACS to ask.
        **keys: matching keys by DICOM keyword in DICOM matching syntax, for example
            ``PatientID="12*"``, ``StudyDate="20240101-"``, ``ModalitiesInStudy="CT"``.

    Returns:
        The matching studies in the order the PACS sent them (empty if none matches).

    Raises:
        ValueError: a key is not a DICOM keyword.
        PacsError: the PACS cannot be reached, refuses the association, or answers with a
            failure status.
    """
    check_query_keys(keys)
    returned = {
        "StudyInstanceUID": "",
        "PatientID": "",
        "StudyDate": "",
        "ModalitiesInStudy": "",
        "NumberOfStudyRelatedSeries": "",
    }
    identifier = _identifier({**returned, **keys}, "STUDY")
    model = STUDY_ROOT_FIND
    ae = _make_ae(spec)
    ae.add_requested_context(model)
    studies: list[StudyInfo] = []
    with _associate(ae, spec, "C-FIND") as assoc:
        for status, found in assoc.send_c_find(identifier, model):
            if "Status" not in status:
                raise PacsError(
                    f"C-FIND on {spec.describe()} got no valid answer (timeout after "
                    f"{spec.timeout_s:g} s, association aborted, or invalid response)"
                )
            category = code_to_category(int(status.Status))
            if category == "Pending":
                if found is None or not found.get("StudyInstanceUID"):
                    logger.warning("C-FIND on %s: a match without StudyInstanceUID", spec.host)
                    continue
                studies.append(_study_info(found))
            elif category == "Success":
                break
            else:
                raise PacsError(
                    f"C-FIND on {spec.describe()} with keys {keys} failed: status "
                    f"{_describe_status(status, QR_FIND_SERVICE_CLASS_STATUS)}"
                )
    logger.info("C-FIND on %s matched %d studies (keys %s)", spec.host, len(studies), keys)
    return studies


def _study_info(ds: Dataset) -> StudyInfo:
    modalities = ds.get("ModalitiesInStudy") or []
    if isinstance(modalities, str):
        modalities = [modalities]
    count = ds.get("NumberOfStudyRelatedSeries")
    return StudyInfo(
        study_uid=str(ds.StudyInstanceUID),
        patient_id=str(ds.get("PatientID") or ""),
        study_date=str(ds.get("StudyDate") or ""),
        modalities=[str(m) for m in modalities if m],
        series_count=None if count in (None, "") else int(count),
    )


# --------------------------------------------------------------------------- storage


def instance_path(out_dir: Path, dataset: Dataset) -> Path:
    """Where a received instance goes: ``out_dir/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.

    Args:
        out_dir: the retrieve's output folder.
        dataset: the instance (only its UIDs are read).

    Returns:
        The file path inside ``out_dir``.

    Raises:
        ValueError: a UID is missing or is not a DICOM UID (digits and dots); such a value
            could name a path outside ``out_dir``.
    """
    parts = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = str(dataset.get(keyword, "")).strip("\0 ")
        if len(value) > 64 or not _UID.fullmatch(value):
            raise ValueError(f"{keyword} must be a DICOM UID (digits and dots), got {value!r}")
        parts.append(value)
    return out_dir.joinpath(parts[0], parts[1], parts[2] + ".dcm")


@dataclass
class _Receiver:
    """EVT_C_STORE handler: writes the instances of one study as they arrive."""

    out_dir: Path
    study_uid: str
    received: list[Path] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, event: evt.Event) -> int:
        try:
            dataset = event.dataset
            path = instance_path(self.out_dir, dataset)
            if str(dataset.StudyInstanceUID) != self.study_uid:
                raise ValueError(
                    f"instance belongs to study {dataset.StudyInstanceUID}, "
                    f"not the requested {self.study_uid}"
                )
        except Exception as exc:  # any undecodable or unexpected instance is refused, not fatal
            with self.lock:
                self.refused.append(f"refused an instance: {exc}")
            logger.warning("C-STORE refused: %s", exc)
            return 0xC001
        try:
            atomic_write_bytes(path, event.encoded_dataset(include_meta=True), mode=0o600)
        except OSError as exc:
            with self.lock:
                self.refused.append(f"cannot write {path}: {exc}")
            logger.error("C-STORE: cannot write %s: %s", path, exc)
            return 0xA700  # out of resources
        with self.lock:
            self.received.append(path)
        logger.debug("C-STORE: wrote %s", path)
        return 0x0000


# --------------------------------------------------------------------------- C-GET / C-MOVE


def retrieve_study(spec: PacsSpec, study_uid: str, out_dir: Path) -> list[Path]:
    """Fetch every instance of one study with ``spec.method`` (C-GET or C-MOVE).

    Each instance is written as ``out_dir/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``
    with the bytes the PACS sent. For C-MOVE, fedcore runs a storage SCP under
    ``spec.destination_ae`` on ``spec.store_host:spec.store_port`` for the duration of the
    call; the PACS must know that AE title with this machine's address and that port.

    Args:
        spec: the PACS.
        study_uid: StudyInstanceUID of the study, e.g. from :func:`find_studies`.
        out_dir: output folder, created if absent.

    Returns:
        The files written, sorted.

    Raises:
        ValueError: ``study_uid`` is not a DICOM UID.
        PacsError: the PACS is unreachable or refuses, the retrieve ends with a failure or
            warning status, a sub-operation failed, or the study has no instance. Files
            received before the error are kept and listed in ``PacsError.received``.
    """
    study_uid = _check_study_uid(study_uid)
    with _storage_scp(spec) as scp:
        return _retrieve(spec, study_uid, out_dir, scp)


def _check_study_uid(study_uid: str) -> str:
    value = study_uid.strip()
    if len(value) > 64 or not _UID.fullmatch(value):
        raise ValueError(f"study_uid must be a DICOM UID (digits and dots), got {study_uid!r}")
    return value


def _retrieve(spec: PacsSpec, study_uid: str, out_dir: Path, scp: _StorageScp | None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(out_dir=out_dir, study_uid=study_uid)
    identifier = _identifier({"StudyInstanceUID": study_uid}, "STUDY")
    if scp is None:
        final = _c_get(spec, identifier, receiver)
        table = QR_GET_SERVICE_CLASS_STATUS
    else:
        with scp.receiving(receiver):
            final = _c_move(spec, identifier)
        table = QR_MOVE_SERVICE_CLASS_STATUS
    received = sorted(receiver.received)
    what = f"{spec.method.upper()} of study {study_uid} from {spec.describe()}"
    if "Status" not in final:
        raise PacsError(
            f"{what} got no final answer (timeout after {spec.timeout_s:g} s, association "
            f"aborted, or invalid response); {len(received)} files received are kept",
            received,
        )
    category = code_to_category(int(final.Status))
    failed = int(final.get("NumberOfFailedSuboperations") or 0)
    problems = [f"status {_describe_status(final, table)}"] if category != "Success" else []
    if failed:
        problems.append(f"{failed} sub-operations failed")
    problems += receiver.refused
    if problems:
        hint = (
            "; check the StudyInstanceUID (find_studies lists the studies the PACS holds)"
            if not received and category == "Failure"
            else ""
        )
        raise PacsError(
            f"{what} did not complete: {'; '.join(problems)}; "
            f"{len(received)} files received are kept in {out_dir}{hint}",
            received,
        )
    if not received:
        raise PacsError(
            f"{what}: the PACS sent no instance; check the StudyInstanceUID "
            "(find_studies lists the studies the PACS holds)"
        )
    logger.info("%s: %d instances in %s", what, len(received), out_dir)
    return received


def _c_get(spec: PacsSpec, identifier: Dataset, receiver: _Receiver) -> Dataset:
    ae = _make_ae(spec)
    ae.add_requested_context(STUDY_ROOT_GET)
    roles: dict[UID, SCP_SCU_RoleSelectionNegotiation] = {}
    for sop, syntaxes in get_storage_contexts():
        ae.add_requested_context(sop, syntaxes)
        roles.setdefault(sop, build_role(sop, scp_role=True))
    handlers = [(evt.EVT_C_STORE, receiver.handle)]
    final = Dataset()
    with _associate(
        ae, spec, "C-GET", ext_neg=list(roles.values()), evt_handlers=handlers
    ) as assoc:
        for status, _ in assoc.send_c_get(identifier, STUDY_ROOT_GET):
            final = status
            if "Status" not in status or code_to_category(int(status.Status)) != "Pending":
                break
    return final


class _StorageScp:
    """fedcore's storage SCP for C-MOVE; hands each instance to the retrieve in flight."""

    def __init__(self) -> None:
        self._receiver: _Receiver | None = None
        self._lock = threading.Lock()

    @contextmanager
    def receiving(self, receiver: _Receiver) -> Iterator[None]:
        with self._lock:
            self._receiver = receiver
        try:
            yield
        finally:
            with self._lock:
                self._receiver = None

    def handle(self, event: evt.Event) -> int:
        with self._lock:
            receiver = self._receiver
        if receiver is None:
            logger.warning("C-STORE refused: no C-MOVE in flight")
            return 0xC001
        return receiver.handle(event)


@contextmanager
def _storage_scp(spec: PacsSpec) -> Iterator[_StorageScp | None]:
    """For C-MOVE, a running storage SCP (shut down on exit); for C-GET, ``None``."""
    if spec.method != "c-move":
        yield None
        return
    if spec.store_port is None:  # PacsSpec checks this; a model built unvalidated may not
        raise ValueError("method 'c-move' needs store_port, got None; set pacs.store_port")
    scp = _StorageScp()
    ae = _make_ae(spec)
    ae.require_called_aet = True
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    try:
        server = ae.start_server(
            (spec.store_host, spec.store_port),
            block=False,
            ae_title=spec.destination_ae,
            evt_handlers=[(evt.EVT_C_STORE, scp.handle)],
        )
    except OSError as exc:
        raise PacsError(
            f"cannot start fedcore's storage SCP for C-MOVE on "
            f"{spec.store_host}:{spec.store_port}: {exc}; choose a free store_port "
            "(and update the move destination on the PACS)"
        ) from exc
    logger.debug(
        "storage SCP %r listening on %s:%d", spec.destination_ae, spec.store_host, spec.store_port
    )
    try:
        yield scp
    finally:
        if server is not None:
            server.shutdown()


def _c_move(spec: PacsSpec, identifier: Dataset) -> Dataset:
    ae = _make_ae(spec)
    ae.add_requested_context(STUDY_ROOT_MOVE)
    final = Dataset()
    with _associate(ae, spec, "C-MOVE") as assoc:
        for status, _ in assoc.send_c_move(identifier, spec.destination_ae, STUDY_ROOT_MOVE):
            final = status
            if "Status" not in status or code_to_category(int(status.Status)) != "Pending":
                break
    if "Status" in final and int(final.Status) == 0xA801:
        raise PacsError(
            f"C-MOVE from {spec.describe()}: the PACS does not know move destination "
            f"{spec.destination_ae!r}; register that AE title on the PACS with this machine's "
            f"address and port {spec.store_port}"
        )
    return final


def pull(
    spec: PacsSpec, out_dir: Path, *, progress: Callable[[int, int], None] | None = None
) -> list[Path]:
    """Find the studies matching ``spec.query`` and retrieve every one of them.

    For C-MOVE, one storage SCP serves the retrieves of all studies.

    Args:
        spec: the PACS and the C-FIND keys to select studies with.
        out_dir: output folder (one sub-folder per study).
        progress: called as ``progress(done, total)`` after each study, in studies.

    Returns:
        Every file written, sorted.

    Raises:
        PacsError: no study matches, or any study could not be retrieved entirely; the
            message lists every failed study, and the files of all studies received are
            kept and listed in ``PacsError.received``.
    """
    studies = find_studies(spec, **spec.query)
    if not studies:
        raise PacsError(
            f"no study on {spec.describe()} matches the query {spec.query}; check the "
            "pacs.query keys in the site config"
        )
    files: list[Path] = []
    failures: list[str] = []
    with _storage_scp(spec) as scp:  # one storage SCP for every C-MOVE of the pull
        for done, study in enumerate(studies, start=1):
            try:
                files += _retrieve(spec, _check_study_uid(study.study_uid), out_dir, scp)
            except (PacsError, ValueError) as exc:
                files += exc.received if isinstance(exc, PacsError) else []
                failures.append(str(exc))
                logger.error("%s", exc)
            if progress is not None:
                progress(done, len(studies))
    if failures:
        raise PacsError(
            f"{len(failures)} of {len(studies)} studies failed: " + " | ".join(failures),
            sorted(files),
        )
    return sorted(files)
