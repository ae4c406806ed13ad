"""The Python `hpack` package as a peer for tests/hpack_peer.rs: one encoder
and one decoder kept for the whole session, driven by lines on stdin, one
answer line each on stdout. Fields travel as `NAMEHEX:VALUEHEX:S`, joined by
commas, S being 1 for a never-indexed field.

    E H FIELDS   encode (H: 1 Huffman, 0 not) -> the block in hex
    D BLOCKHEX   decode -> FIELDS (or `error ...`)
    T N          the encoder's table size is now N (a size update next block)
    M N          the decoder accepts table sizes up to N (our SETTINGS)
"""
import sys

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple

enc = Encoder()
dec = Decoder(max_header_list_size=1 << 30)


def fields_in(arg):
    out = []
    for f in arg.split(",") if arg else []:
        n, v, s = f.split(":")
        out.append((bytes.fromhex(n), bytes.fromhex(v), s == "1"))
    return out


def fields_out(headers):
    return ",".join(
        "%s:%s:%d" % (n.hex(), v.hex(), isinstance(h, NeverIndexedHeaderTuple))
        for h in headers
        for n, v in [h]
    )


for line in sys.stdin:
    cmd, _, arg = line.rstrip("\n").partition(" ")
    if cmd == "E":
        huffman, _, rest = arg.partition(" ")
        print(enc.encode(fields_in(rest), huffman=huffman == "1").hex())
    elif cmd == "D":
        try:
            print(fields_out(dec.decode(bytes.fromhex(arg), raw=True)))
        except Exception as e:  # reported, the test fails on it
            print("error %r" % e)
    elif cmd == "T":
        enc.header_table_size = int(arg)
        print("ok")
    elif cmd == "M":
        dec.max_allowed_table_size = int(arg)
        print("ok")
    else:
        print("error unknown command %r" % cmd)
    sys.stdout.flush()
