"""TLS for both ports: the node's certificate, key and cluster CA read once at start, and the
OpenSSL options each side of each port uses (pyOpenSSL through ``twisted.internet.ssl``).

Peer port: mutual TLS; both sides present a node certificate from the cluster CA and verify the
other's chain; who the peer is comes from its certificate's ``dynamo:node:`` name (checked by the
peer protocol once the handshake is done, since peers are reached by address, not by host name).
HTTP port: the node's certificate; a client certificate from the CA is asked for but optional (a
client may authenticate with a bearer token instead). TLS 1.2 or later.
"""

from __future__ import annotations

from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl

from dynamod.security.identity import Principal, principal_of


class TlsError(ValueError):
    """TLS files that cannot be used, with the reason (the node refuses to start)."""


@attrs.frozen
class TlsMaterial:
    """This node's certificate and key and the cluster CA, checked against each other."""

    certificate: x509.Certificate
    authority: x509.Certificate
    principal: Principal
    #: the key (cryptography's objects throughout: pyOpenSSL deprecates its own in contexts)
    _key: Any
    _trusted: ssl.Certificate

    def peer_server_options(self) -> Any:
        """The peer listener: a certificate from the CA is required."""
        return ssl.CertificateOptions(privateKey=self._key,
                                      certificate=self.certificate,
                                      trustRoot=ssl.trustRootFromCertificates([self._trusted]))

    def peer_client_options(self) -> Any:
        """Outgoing peer connections: present ours, verify theirs against the CA."""
        return self.peer_server_options()

    def http_server_options(self) -> Any:
        """The HTTP listener: a client certificate is verified when one is sent, not required."""
        # ALPN names HTTP/1.1: without it a client offering h2 (curl) got an internal-error alert.
        return ssl.CertificateOptions(privateKey=self._key,
                                      certificate=self.certificate, verify=True,
                                      caCerts=[self._trusted.original], requireCertificate=False,
                                      acceptableProtocols=[b"http/1.1"])


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TlsError(f"cannot read the {what} {path}: {exc.strerror}") from None


def _certificate(data: bytes, path: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise TlsError(f"the {what} {path} is not a PEM certificate") from None


def load_material(cert_path: str, key_path: str, ca_path: str) -> TlsMaterial:
    """Read and cross-check the three files; raises ``TlsError`` naming the file at fault."""
    cert_pem, key_pem, ca_pem = _read(cert_path, "certificate"), _read(key_path, "key"), _read(ca_path, "CA")
    certificate = _certificate(cert_pem, cert_path, "certificate")
    authority = _certificate(ca_pem, ca_path, "CA")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"the key {key_path} is not an unencrypted PEM private key ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, public) != \
            certificate.public_key().public_bytes(serialization.Encoding.PEM, public):
        raise TlsError(f"the key {key_path} does not belong to the certificate {cert_path}")
    try:
        certificate.verify_directly_issued_by(authority)
    except (InvalidSignature, ValueError, TypeError):
        raise TlsError(f"the certificate {cert_path} was not issued by the CA {ca_path}") from None
    principal = principal_of(certificate)
    if principal is None or not principal.is_node:
        raise TlsError(f"the certificate {cert_path} names no node (made by dynactl certs issue?)")
    return TlsMaterial(certificate, authority, principal, key, ssl.Certificate.loadPEM(ca_pem))


def peer_principal(transport: Any) -> Principal | None:
    """Whom the other side's certificate names, once the handshake is done (None: no certificate,
    or one that names no one)."""
    certificate = transport.getPeerCertificate()
    if certificate is None:
        return None
    if isinstance(certificate, crypto.X509):
        certificate = certificate.to_cryptography()
    return principal_of(certificate)


def node_tls(config: Any) -> TlsMaterial | None:
    """A node's TLS material when its config turns TLS on; the certificate must name the node."""
    if not config.tls:
        return None
    material = load_material(config.tls_cert, config.tls_key, config.tls_ca)
    if material.principal.name != config.node_id:
        raise TlsError(f"the certificate {config.tls_cert} names node {material.principal.name!r}, "
                       f"not this node {config.node_id!r}")
    return material
