"""Who a certificate names: the dynamo: SAN URIs, roles, and certificates that name no one."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dynamod.security.identity import Principal, Role, client_uri, node_uri, parse_uri, principal_of

KEY = ec.generate_private_key(ec.SECP256R1())


def certificate(*uris: str, san: bool = True, dns: tuple[str, ...] = ()) -> x509.Certificate:
    """A self-signed certificate whose SAN holds ``uris`` and ``dns`` names (no SAN when not ``san``)."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(KEY.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=1)))
    if san:
        entries = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
        builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
    return builder.sign(KEY, hashes.SHA256())


def test_roles_are_ordered_reader_writer_admin():
    assert Role.READER < Role.WRITER < Role.ADMIN
    assert [Role.named(n) for n in ("reader", "writer", "admin")] == [Role.READER, Role.WRITER, Role.ADMIN]
    assert Role.named("Admin") is Role.ADMIN


def test_an_unknown_role_is_refused_naming_the_roles():
    with pytest.raises(ValueError, match="reader, writer, admin"):
        Role.named("boss")


def test_uris_name_nodes_and_clients_and_read_back():
    assert node_uri("n1") == "dynamo:node:n1"
    assert client_uri("alice", Role.WRITER) == "dynamo:client:writer:alice"
    assert parse_uri(node_uri("n1")) == Principal("node", "n1")
    assert parse_uri(client_uri("alice", Role.WRITER)) == Principal("client", "alice", Role.WRITER)


@pytest.mark.parametrize("uri", ["https://example.com", "dynamo:node:", "dynamo:client:boss:alice",
                                 "dynamo:client:reader:", "dynamo:other:x"])
def test_other_uris_name_no_one(uri):
    assert parse_uri(uri) is None


@pytest.mark.parametrize("name", ["", "two words", "tab\there", "nul\x00"])
def test_names_with_spaces_or_unprintable_characters_are_refused(name):
    with pytest.raises(ValueError):
        node_uri(name)
    with pytest.raises(ValueError):
        client_uri(name, Role.READER)


def test_a_certificate_with_one_dynamo_uri_names_its_holder():
    cert = certificate(node_uri("n1"), "https://example.com", dns=("n1.example.com",))
    assert principal_of(cert) == Principal("node", "n1")
    assert principal_of(certificate(client_uri("app", Role.READER))) == Principal("client", "app", Role.READER)


def test_a_certificate_with_two_dynamo_uris_names_no_one():
    assert principal_of(certificate(node_uri("n1"), node_uri("n2"))) is None
    assert principal_of(certificate(node_uri("n1"), client_uri("n1", Role.ADMIN))) is None


def test_a_certificate_without_a_dynamo_uri_names_no_one():
    assert principal_of(certificate("https://example.com", dns=("n1",))) is None
    assert principal_of(certificate(san=False)) is None


def test_principals_describe_themselves():
    assert Principal("node", "n1").describe() == "node n1"
    assert Principal("client", "app", Role.WRITER).describe() == "client app (writer)"
    assert Principal("node", "n1").is_node and not Principal("client", "app", Role.READER).is_node
