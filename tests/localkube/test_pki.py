"""The cluster's certificates: one CA, a serving certificate for every address pods and the host
use, and client identities the API server's bootstrap policy knows."""

from __future__ import annotations

from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localkube import pki
from localkube.layout import APISERVER_PORT, KUBERNETES_SERVICE_IP, NODE_IP, NODE_NAME


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_certificate_is_signed_by_the_ca(tmp_path: Path) -> None:
    keys = pki.create(tmp_path)
    ca = _cert(keys.ca_cert)
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    for name in ["apiserver", *pki.CLIENTS]:
        cert = _cert(keys.cert(name))
        cert.verify_directly_issued_by(ca)
        assert (keys.key(name).stat().st_mode & 0o777) == 0o600


def test_serving_certificate_names_every_address(tmp_path: Path) -> None:
    cert = _cert(pki.create(tmp_path).cert("apiserver"))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    addresses = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert {NODE_IP, KUBERNETES_SERVICE_IP} <= addresses
    assert "kubernetes.default.svc.cluster.local" in sans.get_values_for_type(x509.DNSName)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages


def test_the_kubelet_is_a_node_to_the_node_authorizer(tmp_path: Path) -> None:
    subject = _cert(pki.create(tmp_path).cert("kubelet")).subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{NODE_NAME}"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"


def test_kubeconfigs_point_at_the_api_server_with_their_own_identity(tmp_path: Path) -> None:
    keys = pki.create(tmp_path)
    for name in pki.KUBECONFIGS:
        config = yaml.safe_load(keys.kubeconfig(name).read_text())
        assert config["clusters"][0]["cluster"]["server"] == f"https://{NODE_IP}:{APISERVER_PORT}"
        assert config["users"][0]["user"]["client-certificate"] == str(keys.cert(name))
