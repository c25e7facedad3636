"""The cluster's certificate authority, node and client certificates, and HTTP tokens (issue 15).

A certs directory holds::

    ca.pem  ca.key                  the cluster CA
    nodes/<ID>.pem  nodes/<ID>.key  one per node: server and client of TLS on both ports
    clients/<NAME>.pem  .key        one per HTTP client, its role in the certificate
    tokens                          bearer tokens' digests (dynamod.security.tokens)

Keys are ECDSA P-256, written unencrypted (PKCS8 PEM) with mode 0600 from the moment the file
exists; certificates are 0644; the directories that hold keys are made 0700. Who a certificate
names is dynamod.security.identity's business. Existing files are refused unless ``force``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dynamod.security.identity import Role, check_name, client_uri, node_uri, principal_of
from dynamod.security.tokens import TokenFileError, format_line, load_tokens, new_token, token_digest

CA_CERT, CA_KEY, TOKENS = "ca.pem", "ca.key", "tokens"
NODES, CLIENTS = "nodes", "clients"
DEFAULT_CLUSTER = "dynamo"
CA_DAYS, LEAF_DAYS = 3650, 825

#: Backdating of notBefore, so that a peer whose clock is a little behind accepts a new certificate.
CLOCK_SKEW = datetime.timedelta(minutes=5)
KEY_MODE, CERT_MODE, DIR_MODE = 0o600, 0o644, 0o700

_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class CertsError(Exception):
    """Something an operator must fix: a missing CA, a bad name or address, an unwritable file."""


class CertsExist(CertsError):
    """A file would be overwritten and ``force`` was not given."""


class NotIssued(CertsError):
    """A certificate was not signed by the CA it was checked against."""


@attrs.frozen
class Issued:
    """A certificate just written and where."""

    certificate: x509.Certificate
    certificate_path: Path
    key_path: Path


# -- pure: names, addresses, certificate contents -------------------------------------------------


def parse_host(address: str) -> x509.GeneralName:
    """The SAN entry for the host of ``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` (a bare IPv6
    address is accepted too): an IP address or a DNS name. CertsError when it is neither."""
    text = address.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        port_given = rest.startswith(":") and _is_port(rest[1:])
        if not bracket or (rest and not port_given):
            raise CertsError(f"bad address {address!r}: expected [IPV6] or [IPV6]:PORT")
        try:
            return x509.IPAddress(ipaddress.IPv6Address(host))
        except ValueError:
            raise CertsError(f"bad address {address!r}: {host!r} in brackets is not an IPv6 address") from None
    if text.count(":") == 1:
        text, _, port = text.partition(":")
        if not _is_port(port):
            raise CertsError(f"bad address {address!r}: the port must be a number from 1 to 65535")
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    labels = name.split(".")
    # An all-digit last label is a mistyped IPv4 address (10.0.0), never a top-level domain.
    if (not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels)
            or labels[-1].isdigit()):
        raise CertsError(f"bad address {address!r}: not an IP address or a DNS name")
    return x509.DNSName(name.lower())


def _is_port(text: str) -> bool:
    return text.isdigit() and 1 <= int(text) <= 65535


def host_names(addresses: list[str]) -> list[x509.GeneralName]:
    """The SAN entries for the hosts of ``addresses``, each once, in order."""
    names: list[x509.GeneralName] = []
    for address in addresses:
        name = parse_host(address)
        if name not in names:
            names.append(name)
    return names


def check_file_name(name: str, what: str) -> None:
    """CertsError unless ``name`` is fit to be a certificate name and a file name in the certs directory."""
    try:
        check_name(name)
    except ValueError as exc:
        raise CertsError(f"bad {what} name: {exc}") from None
    if "/" in name or os.sep in name or name.startswith("."):
        raise CertsError(f"bad {what} name {name!r}: it names a file, so no '/' and no leading '.'")


def _subject(common_name: str, cluster: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def build_ca(key: ec.EllipticCurvePrivateKey, cluster: str, days: int,
             now: datetime.datetime) -> x509.Certificate:
    """A self-signed CA certificate for ``cluster``: it may sign leaves only (path length 0)."""
    subject = _subject(f"{cluster} CA", cluster)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))


def build_leaf(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, public_key: ec.EllipticCurvePublicKey,
               common_name: str, names: list[x509.GeneralName], usages: list[x509.ObjectIdentifier], days: int,
               now: datetime.datetime) -> x509.Certificate:
    """A certificate signed by the CA for ``public_key``, naming ``names`` in its SAN. It ends no later
    than the CA does: a leaf outliving its issuer would fail verification anyway."""
    cluster = _cluster_of(ca_cert)
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_key_id = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (x509.CertificateBuilder()
            .subject_name(_subject(common_name, cluster)).issuer_name(ca_cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
            .sign(ca_key, hashes.SHA256()))


def _cluster_of(ca_cert: x509.Certificate) -> str:
    organizations = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(organizations[0].value) if organizations else DEFAULT_CLUSTER


def verify_chain(ca_pem: bytes, cert_pem: bytes) -> None:
    """NotIssued unless the certificate in ``cert_pem`` was signed by the CA in ``ca_pem``
    (CertsError when either is not a PEM certificate)."""
    ca_cert, cert = _load_certificate(ca_pem, "CA"), _load_certificate(cert_pem, "certificate")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        # ValueError: issuer name differs; TypeError: unsupported key type; InvalidSignature: another CA.
        raise NotIssued(f"not issued by this CA: {exc or 'the signature does not verify'}") from None


def _load_certificate(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise CertsError(f"the {what} is not a PEM certificate") from None


def describe_certificate(cert: x509.Certificate) -> dict[str, Any]:
    """What ``dynactl certs show`` prints about ``cert``."""
    try:
        alternative = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        alternative = x509.SubjectAlternativeName([])
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    principal = principal_of(cert)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "is_ca": is_ca,
        "principal": principal.describe() if principal else None,
        "kind": principal.kind if principal else None,
        "name": principal.name if principal else None,
        "role": principal.role.label if principal and principal.role else None,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "serial": format(cert.serial_number, "x"),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "uris": alternative.get_values_for_type(x509.UniformResourceIdentifier),
        "dns": alternative.get_values_for_type(x509.DNSName),
        "ips": [str(ip) for ip in alternative.get_values_for_type(x509.IPAddress)],
    }


# -- files ------------------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _check_days(days: int) -> None:
    if days < 1:
        raise CertsError(f"a certificate must be valid for at least one day, not {days}")


def _make_directory(path: Path) -> None:
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertsError(f"cannot create directory {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise CertsError(f"{path} is not a directory")


def _refuse_existing(paths: list[Path], force: bool) -> None:
    # Checked before any key is made, so that a refusal leaves the directory as it was.
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise CertsExist(f"{' and '.join(existing)} already {verb} (--force to replace)")


def _write_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to ``path`` in a file created with ``mode``, so a key is never readable by
    others, not even for a moment. With ``force`` a new file replaces the old one atomically."""
    target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp") if force else path
    try:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except FileExistsError:
        raise CertsExist(f"{path} already exists (--force to replace)") from None
    except OSError as exc:
        raise CertsError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(fd, mode)  # the umask may have narrowed a certificate's mode; nothing is written yet
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(target, path)
    except OSError as exc:
        if force:
            target.unlink(missing_ok=True)
        raise CertsError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                force: bool) -> Issued:
    _write_file(key_path, _key_pem(key), KEY_MODE, force)
    _write_file(cert_path, _cert_pem(cert), CERT_MODE, force)
    return Issued(cert, cert_path, key_path)


def init_ca(directory: str | Path, cluster_name: str = DEFAULT_CLUSTER, days: int = CA_DAYS,
            force: bool = False) -> Issued:
    """Make the cluster CA in ``directory`` (``ca.pem``, ``ca.key``)."""
    if not cluster_name or not cluster_name.isprintable():
        raise CertsError(f"bad cluster name {cluster_name!r}: it must be printable and non-empty")
    _check_days(days)
    root = Path(directory)
    cert_path, key_path = root / CA_CERT, root / CA_KEY
    _make_directory(root)
    _refuse_existing([cert_path, key_path], force)
    key = _new_key()
    return _write_pair(cert_path, key_path, build_ca(key, cluster_name, days, _now()), key, force)


def ensure_ca(directory: str | Path, cluster_name: str = DEFAULT_CLUSTER) -> Path:
    """The CA certificate of ``directory``, the CA made first unless there is one (what it issued
    stays valid); CertsError when it cannot be made."""
    cert_path = Path(directory) / CA_CERT
    if not cert_path.exists():
        init_ca(directory, cluster_name)
    return cert_path


def load_ca(directory: str | Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key in ``directory``; CertsError when there is none or they do not match."""
    root = Path(directory)
    cert_path, key_path = root / CA_CERT, root / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        raise CertsError(f"no CA in {root} (make one with: dynactl certs init --dir {root})")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise CertsError(f"cannot read the CA in {root}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise CertsError(f"the CA in {root} is unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertsError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def _issue(directory: str | Path, folder: str, name: str, names: list[x509.GeneralName],
           usages: list[x509.ObjectIdentifier], days: int, force: bool) -> Issued:
    _check_days(days)
    ca_cert, ca_key = load_ca(directory)
    where = Path(directory) / folder
    cert_path, key_path = where / f"{name}.pem", where / f"{name}.key"
    _make_directory(where)
    _refuse_existing([cert_path, key_path], force)
    key = _new_key()
    cert = build_leaf(ca_cert, ca_key, key.public_key(), name, names, usages, days, _now())
    return _write_pair(cert_path, key_path, cert, key, force)


def issue_node(directory: str | Path, node_id: str, addresses: list[str], days: int = LEAF_DAYS,
               force: bool = False) -> Issued:
    """Issue ``nodes/<node_id>.pem`` and ``.key``: the node's identity plus the hosts of ``addresses``
    (its peer and HTTP addresses, as clients dial them), for TLS server and client use."""
    check_file_name(node_id, "node")
    names = [x509.UniformResourceIdentifier(node_uri(node_id)), *host_names(addresses)]
    return _issue(directory, NODES, node_id, names, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                  days, force)


def issue_client(directory: str | Path, name: str, role: Role, days: int = LEAF_DAYS,
                 force: bool = False) -> Issued:
    """Issue ``clients/<name>.pem`` and ``.key``: a TLS client of the HTTP API with ``role``."""
    check_file_name(name, "client")
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(client_uri(name, role))]
    return _issue(directory, CLIENTS, name, names, [ExtendedKeyUsageOID.CLIENT_AUTH], days, force)


def add_token(directory: str | Path, name: str, role: Role) -> str:
    """Add a token for ``name`` with ``role`` to ``directory``/tokens (made 0600 if new) and return
    it: only its digest is stored, so this is the one time it can be seen."""
    root = Path(directory)
    path = root / TOKENS
    token = new_token()
    try:
        line = format_line(name, role, token_digest(token))
    except TokenFileError as exc:
        raise CertsError(f"bad token name: {exc}") from None
    _make_directory(root)
    if not path.exists():
        header = "# dynamod bearer tokens: NAME ROLE SHA256(token); made by dynactl certs token\n"
        _write_file(path, f"{header}{line}\n".encode(), KEY_MODE, force=False)
        return token
    try:
        table = load_tokens(path)
        existing = path.read_bytes()
    except (TokenFileError, OSError) as exc:
        raise CertsError(str(exc)) from None
    if name in table.names():
        raise CertsExist(f"{path} already has a token named {name!r}")
    try:
        with open(path, "a", encoding="utf-8") as handle:
            # A last line without its newline would otherwise run into the new one.
            handle.write(("\n" if existing and not existing.endswith(b"\n") else "") + line + "\n")
    except OSError as exc:
        raise CertsError(f"cannot write {path}: {exc.strerror or exc}") from None
    return token


def issued_by(ca_path: str | Path, cert_path: str | Path) -> bool:
    """Whether the CA certificate in the file ``ca_path`` signed the one in ``cert_path``."""
    try:
        ca_pem, cert_pem = Path(ca_path).read_bytes(), Path(cert_path).read_bytes()
    except OSError as exc:
        raise CertsError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
    try:
        verify_chain(ca_pem, cert_pem)
    except NotIssued:
        return False
    return True


def describe(cert_path: str | Path) -> dict[str, Any]:
    """``describe_certificate`` of the certificate in the file ``cert_path``."""
    try:
        pem = Path(cert_path).read_bytes()
    except OSError as exc:
        raise CertsError(f"cannot read {cert_path}: {exc.strerror or exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise CertsError(f"{cert_path} is not a PEM certificate") from None
    return {"file": str(cert_path), **describe_certificate(cert)}
