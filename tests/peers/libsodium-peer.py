#!/usr/bin/python3
"""libsodium (through python3-nacl) and PyJWT as the peer of qrelay's
sodium and jwt libraries, for tests/tests/qrelay_crypto.rs.

Usage: libsodium-peer.py COMMAND ARG...   (all binary values in hex)

  box-keypair                 prints "PK SK"
  seal PK MESSAGE             prints the sealed box
  open PK SK BOX              prints the message, or "FAIL"
  sign-keypair                prints "PK SK" (SK = seed || pk, 64 bytes)
  sign SK MESSAGE             prints the detached signature
  verify PK SIG MESSAGE       prints "ok" or "FAIL"
  seed-keypair SEED           prints "PK SK" of crypto_sign_seed_keypair
  scalarmult-base N           prints crypto_scalarmult_base(N)
  jwt-verify PK TOKEN         PyJWT's decode with the Ed25519 public key:
                              prints the header and the payload as JSON
                              (sorted keys), one a line, or the name of the
                              exception
  jwt-encode SK HEADER PAYLOAD   PyJWT's EdDSA token (HEADER, PAYLOAD: JSON
                              texts; the payload's keys in their order)

Exits 2 on a bad command line.
"""

import json
import sys
from binascii import hexlify, unhexlify

import jwt
import nacl.bindings as b
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def h(x):
    return hexlify(x).decode()


def main(argv):
    cmd, args = argv[0], [a for a in argv[1:]]
    if cmd == "box-keypair":
        pk, sk = b.crypto_box_keypair()
        print(h(pk), h(sk))
    elif cmd == "seal":
        print(h(b.crypto_box_seal(unhexlify(args[1]), unhexlify(args[0]))))
    elif cmd == "open":
        try:
            print(h(b.crypto_box_seal_open(unhexlify(args[2]), unhexlify(args[0]), unhexlify(args[1]))))
        except Exception:
            print("FAIL")
    elif cmd == "sign-keypair":
        pk, sk = b.crypto_sign_keypair()
        print(h(pk), h(sk))
    elif cmd == "sign":
        print(h(b.crypto_sign(unhexlify(args[1]), unhexlify(args[0]))[:64]))
    elif cmd == "verify":
        try:
            b.crypto_sign_open(unhexlify(args[1]) + unhexlify(args[2]), unhexlify(args[0]))
            print("ok")
        except Exception:
            print("FAIL")
    elif cmd == "seed-keypair":
        pk, sk = b.crypto_sign_seed_keypair(unhexlify(args[0]))
        print(h(pk), h(sk))
    elif cmd == "scalarmult-base":
        print(h(b.crypto_scalarmult_base(unhexlify(args[0]))))
    elif cmd == "jwt-verify":
        key = Ed25519PublicKey.from_public_bytes(unhexlify(args[0]))
        try:
            payload = jwt.decode(args[1], key, algorithms=["EdDSA"])
        except Exception as e:
            print(type(e).__name__)
            return 0
        print(json.dumps(jwt.get_unverified_header(args[1]), sort_keys=True))
        print(json.dumps(payload, sort_keys=True))
    elif cmd == "jwt-encode":
        key = Ed25519PrivateKey.from_private_bytes(unhexlify(args[0])[:32])
        header = json.loads(args[1])
        payload = json.loads(args[2])
        print(jwt.encode(payload, key, algorithm="EdDSA", headers=header))
    else:
        print("unknown command", cmd, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
