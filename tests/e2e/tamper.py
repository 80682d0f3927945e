#!/usr/bin/env python3
"""Make a damaged copy of one fixture file, in place.

  tamper.py signed  FILE        flip one byte inside the signed payload; the gzip stays valid, so
                                only the RSA signature check can notice
  tamper.py tarpad  FILE        flip one byte in the zero padding after the first tar member
                                (VERSION): the tar and the inner checksum stay valid, only the
                                outer checksum (sha256 of the whole file) changes
  tamper.py tarbody FILE        flip one byte inside the contents.tar.gz member: breaks the inner
                                checksum (and therefore the outer one too)
  tamper.py replace FILE OTHER  replace FILE by the bytes of OTHER, a different but validly
                                signed/built file (another package's record, another version's
                                tarball, another repository's record)
"""
import gzip
import io
import sys
import tarfile


def varint(buf, i):
    n, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n, i


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    mode, path = sys.argv[1], sys.argv[2]
    with open(path, 'rb') as f:
        data = bytearray(f.read())
    if mode == 'signed':
        raw = bytearray(gzip.decompress(bytes(data)))
        # Signed{1: payload bytes, 2: signature bytes}: field 1 comes first.
        assert raw[0] == 0x0A, 'not a Signed protobuf'
        ln, start = varint(raw, 1)
        pos = start + ln - 3            # near the end of the payload, inside a string field
        raw[pos] ^= 0x01
        data = bytearray(gzip.compress(bytes(raw), mtime=0))
    elif mode == 'tarpad':
        tf = tarfile.open(fileobj=io.BytesIO(bytes(data)))
        m = tf.getmembers()[0]
        pos = m.offset_data + m.size + 10
        assert pos % 512 != 0 and data[pos] == 0, 'no padding byte where expected'
        data[pos] ^= 0x01
    elif mode == 'tarbody':
        tf = tarfile.open(fileobj=io.BytesIO(bytes(data)))
        m = tf.getmember('contents.tar.gz')
        data[m.offset_data + m.size // 2] ^= 0x01
    elif mode == 'replace':
        with open(sys.argv[3], 'rb') as f:
            other = f.read()
        assert other != bytes(data), 'replacement is identical'
        data = bytearray(other)
    else:
        sys.exit('unknown mode %r\n%s' % (mode, __doc__))
    with open(path, 'wb') as f:
        f.write(bytes(data))


if __name__ == '__main__':
    main()
