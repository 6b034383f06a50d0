"""Certificates, the service-account key and kubeconfigs, made fresh at every start.

One CA signs everything: the API server's serving certificate (for the node address, the
``kubernetes`` Service address and its DNS names) and one client certificate per identity. The
identities are the ones the API server's bootstrap RBAC policy and the Node authorizer already
know (``system:kube-controller-manager``, ``system:node:<node>``, ...), so no role needs adding for
the control plane. Keys are ECDSA P-256: fast to make, accepted by every component.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localkube.layout import APISERVER_PORT, CLUSTER_DOMAIN, KUBERNETES_SERVICE_IP, NODE_IP, NODE_NAME

_VALIDITY = dt.timedelta(days=7)

#: file stem -> (common name, organisation or None): the cluster's client identities.
CLIENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("localkube-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
    "kube-proxy": ("system:kube-proxy", None),
    "coredns": ("localkube:coredns", None),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
}
#: The identities that talk to the API server through a kubeconfig.
KUBECONFIGS = ("admin", "controller-manager", "scheduler", "kubelet", "kube-proxy", "coredns")


@dataclasses.dataclass(frozen=True)
class Pki:
    """Paths of everything :func:`create` writes into one directory."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_public_key(self) -> Path:
        return self.directory / "sa.pub"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def kubeconfig(self, name: str) -> Path:
        return self.directory / f"{name}.kubeconfig"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organisation: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    return x509.Name(attributes)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


def _leaf(
    pki: Pki,
    name: str,
    *,
    subject: x509.Name,
    usages: list[x509.ObjectIdentifier],
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    sans: list[x509.GeneralName] | None = None,
) -> None:
    ca_cert, ca_key = ca
    key = _new_key()
    builder = (
        _builder(subject, ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    _write_key(pki.key(name), key)
    _write_cert(pki.cert(name), builder.sign(ca_key, hashes.SHA256()))


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Signatures only; a CA's key signs certificates and revocation lists as well."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _kubeconfig(pki: Pki, name: str, server: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "localkube", "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)}}],
        "users": [
            {"name": name, "user": {"client-certificate": str(pki.cert(name)), "client-key": str(pki.key(name))}}
        ],
        "contexts": [{"name": "localkube", "context": {"cluster": "localkube", "user": name}}],
        "current-context": "localkube",
    }
    pki.kubeconfig(name).write_text(yaml.safe_dump(config, sort_keys=False))


def create(directory: Path) -> Pki:
    """Write a new CA, every certificate, the service-account key pair and the kubeconfigs."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    ca_key = _new_key()
    ca_name = _name("localkube-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_cert, ca_cert)
    ca = (ca_cert, ca_key)

    service_names = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
    ]
    serving_sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(address)) for address in (NODE_IP, KUBERNETES_SERVICE_IP, "127.0.0.1")
    ]
    serving_sans += [x509.DNSName(name) for name in [*service_names, "localhost", NODE_NAME]]
    _leaf(
        pki,
        "apiserver",
        subject=_name("kube-apiserver"),
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        ca=ca,
        sans=serving_sans,
    )
    for name, (common_name, organisation) in CLIENTS.items():
        _leaf(pki, name, subject=_name(common_name, organisation), usages=[ExtendedKeyUsageOID.CLIENT_AUTH], ca=ca)

    sa_key = _new_key()
    _write_key(pki.service_account_key, sa_key)
    pki.service_account_public_key.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    server = f"https://{NODE_IP}:{APISERVER_PORT}"
    for name in KUBECONFIGS:
        _kubeconfig(pki, name, server)
    return pki
