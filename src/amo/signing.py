"""Signed bundles: `manifest.json` (which seals the sha256 of every other file) signed with an
elliptic-curve key through model-signing (the OpenSSF model-signing library, key mode: offline,
no Sigstore service), the signature in `manifest.sig` beside it.

    openssl ecparam -name prime256v1 -genkey -noout -out signing.pem
    openssl ec -in signing.pem -pubout -out verify.pem
    amo bundle ... --sign-key signing.pem          # or AMO_SIGNING_KEY=signing.pem
    AMO_VERIFY_KEY=verify.pem amo promote / amo serve

The manifest's `signing` names the scheme and the signer's key fingerprint, or is null for an
unsigned bundle. With a verify key configured (AMO_VERIFY_KEY, or params.yaml registry.verify_key),
promotion, rollback, `amo bundles verify` and the runtime refuse unsigned bundles and bundles
signed with another key, by name; with none, signed and unsigned bundles are both accepted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from amo.bundle import MANIFEST, SIGNATURE, BundleError, read_manifest, write_manifest

SCHEME = "model-signing/elliptic-key"


def _public_der(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint_of(public_key_pem: Path) -> str:
    """`sha256:<hex>` of a PEM public key (its DER SubjectPublicKeyInfo); BundleError naming the
    file when it is no public key."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(Path(public_key_pem).read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleError(f"verify key {public_key_pem}: not a readable PEM public key ({exc})") from None
    return "sha256:" + hashlib.sha256(_public_der(key)).hexdigest()


def signer_of(private_key_pem: Path) -> dict[str, str]:
    """What a bundle signed with this private key records in its manifest's `signing`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(Path(private_key_pem).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"signing key {private_key_pem}: not a readable, unencrypted PEM private key "
                          f"({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BundleError(f"signing key {private_key_pem}: an elliptic-curve key is needed (model-signing's key "
                          f"mode), got {type(key).__name__}")
    return {"scheme": SCHEME, "key": "sha256:" + hashlib.sha256(_public_der(key.public_key())).hexdigest()}


def sign_bundle(bundle: Path, private_key_pem: Path) -> dict[str, Any]:
    """Record the signer in `bundle`'s manifest, seal it again, and sign manifest.json into
    manifest.sig beside it; the sealed manifest."""
    from model_signing import signing

    signer = signer_of(private_key_pem)
    manifest = read_manifest(bundle)
    sealed = write_manifest(bundle, {**{k: v for k, v in manifest.items() if k != "digest"}, "signing": signer})
    signing.Config().use_elliptic_key_signer(private_key=Path(private_key_pem)).sign(bundle / MANIFEST,
                                                                                     bundle / SIGNATURE)
    return sealed


def check_signature(bundle: Path, public_key_pem: Path) -> dict[str, Any]:
    """The manifest of `bundle` when it is signed by the key `public_key_pem` and its
    manifest.json is the one signed; else BundleError naming the bundle and what is wrong."""
    manifest = read_manifest(bundle)
    name = f"bundle {manifest['bundle_id']} at {bundle}"
    expected = fingerprint_of(public_key_pem)
    signer = manifest.get("signing")
    if not signer or not (bundle / SIGNATURE).is_file():
        raise BundleError(f"{name} is unsigned ({'no signing in its manifest' if not signer else 'no ' + SIGNATURE}); "
                          f"the verify key {public_key_pem} ({expected[:19]}…) requires bundles signed with it")
    if signer.get("key") != expected:
        raise BundleError(f"{name} is signed with key {str(signer.get('key'))[:19]}…, not the verify key "
                          f"{public_key_pem} ({expected[:19]}…)")
    from model_signing import verifying

    try:
        verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key_pem)).verify(
            bundle / MANIFEST, bundle / SIGNATURE)
    except Exception as exc:  # noqa: BLE001 -- model-signing raises ValueError and others
        raise BundleError(f"{name}: {SIGNATURE} does not verify against {public_key_pem}: "
                          f"{str(exc).splitlines()[0][:300]}") from None
    return manifest
