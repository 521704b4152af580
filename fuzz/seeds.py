#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into corpus/<target>/ (then `cargo fuzz cmin`).

Run from the fuzz/ directory: python3 seeds.py. Formats: see each target's `//!` header.
Tokens are HS256 with key b"k", the key the `request` and `token` targets use.
"""
import base64, hashlib, hmac, json, os, struct

KEY = b"k"
EXP_2100 = 4102444800


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(payload, header=None, key=KEY):
    header = header or {"alg": "HS256", "typ": "JWT"}
    si = b64(json.dumps(header, separators=(",", ":")).encode()) + "." + \
        b64(json.dumps(payload, separators=(",", ":")).encode())
    return si + "." + b64(hmac.new(key, si.encode(), hashlib.sha256).digest())


def write(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


GOOD = jwt({"channels": ["user:42", "news"], "exp": EXP_2100, "sub": "u42"})
ALL_A = jwt({"channels": ["a", "b", "c", "t"], "exp": EXP_2100})
EXPIRED = jwt({"channels": ["user:42"], "exp": 1000})
OTHER_KEY = jwt({"channels": ["user:42"], "exp": EXP_2100}, key=b"not k")
NONE_ALG = b64(b'{"alg":"none"}') + "." + b64(b'{"channels":["a"],"exp":4102444800}') + "."
E1, EABC = "000000000001", "000000000abc"

requests = {
    "poll": "GET /pns/poll?channel=user%3A42&cursor=" + E1 + "0&hold=0 HTTP/1.1\r\nHost: h\r\n\r\n",
    "poll_etag": "GET /pns/poll?channel=user:42&channel=news HTTP/1.1\r\nHost: h\r\n"
                 "If-None-Match: W/\"" + E1 + "1\"\r\nConnection: keep-alive\r\n\r\n",
    "reset": "GET /pns/poll?channel=a&cursor=" + E1 + "2 HTTP/1.1\r\n\r\n",
    "multi": "GET /pns/poll?channel=a&channel=b&channel=news&channel=t&cursor=" + E1 + "3&hold=5&comefrom=100 HTTP/1.1\r\n\r\n",
    "park": "GET /pns/poll?channel=nobody&hold=200 HTTP/1.1\r\nHost: h\r\n\r\n",
    "foreign": "GET /pns/poll?channel=news&cursor=00000000ffff5 HTTP/1.1\r\n\r\n",
    "past": "GET /pns/poll?channel=news&cursor=" + E1 + "ff HTTP/1.1\r\n\r\n",
    "badcursor": "GET /pns/poll?channel=news&cursor=zz HTTP/1.1\r\n\r\n",
    "options": "OPTIONS /pns/poll HTTP/1.1\r\nOrigin: https://app.example\r\n\r\n",
    "head": "HEAD /pns/poll HTTP/1.1\r\n\r\n",
    "post": "POST /pns/poll HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "getbody": "GET /pns/poll?channel=a HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\nx",
    "chunked": "GET /pns/poll?channel=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "health10": "GET /pns/health HTTP/1.0\r\n\r\n",
    "health_post": "PUT /pns/health HTTP/1.1\r\n\r\n",
    "notfound": "GET /nope?x=1#frag HTTP/1.1\r\nConnection: close\r\n\r\n",
    "absolute": "GET http://h:8080/pns/poll?channel=x&hold=0 HTTP/1.1\r\n\r\n",
    "lf_only": "\r\n\nGET /pns/poll?channel=b&cursor=" + E1 + "0\nHost: h\n\n",
    "too_many": "GET /pns/poll?" + "&".join("channel=c%d" % i for i in range(17)) + " HTTP/1.1\r\n\r\n",
    "sixteen": "GET /pns/poll?" + "&".join("channel=c%d" % i for i in range(16)) + "&hold=1 HTTP/1.1\r\n\r\n",
    "badhold": "GET /pns/poll?channel=a&hold=-1 HTTP/1.1\r\n\r\n",
    "badenc": "GET /pns/poll?channel=a%2&x=%C3 HTTP/1.1\r\n\r\n",
    "pipelined": "GET /pns/health HTTP/1.1\r\n\r\nGET /pns/poll?channel=a HTTP/1.1\r\n\r\n",
    "sid": "GET /pns/poll?sid=" + GOOD + "&cursor=" + EABC + "0 HTTP/1.1\r\n\r\n",
    "bearer": "GET /pns/poll?channel=news&cursor=" + EABC + "1 HTTP/1.1\r\nAuthorization: Bearer " + GOOD + "\r\n\r\n",
    "bearer_all": "GET /pns/poll?cursor=" + EABC + "2&hold=0 HTTP/1.1\r\nAuthorization: bearer  " + ALL_A + " \r\n\r\n",
    "forbidden": "GET /pns/poll?channel=a HTTP/1.1\r\nAuthorization: Bearer " + GOOD + "\r\n\r\n",
    "expired": "GET /pns/poll?sid=" + EXPIRED + " HTTP/1.1\r\n\r\n",
    "otherkey": "GET /pns/poll?sid=" + OTHER_KEY + " HTTP/1.1\r\n\r\n",
    "nonealg": "GET /pns/poll?channel=a&sid=" + NONE_ALG + " HTTP/1.1\r\n\r\n",
    "basic": "GET /pns/poll?channel=a HTTP/1.1\r\nAuthorization: Basic YTpi\r\n\r\n",
    "two_auth": "GET /pns/poll HTTP/1.1\r\nAuthorization: Bearer x\r\nAuthorization: Bearer y\r\n\r\n",
    "inm_list": "GET /pns/poll?channel=a HTTP/1.1\r\nIf-None-Match: \"" + E1 + "1\"\r\nIf-None-Match: \"x\"\r\n\r\n",
    "http2": "GET /pns/poll HTTP/2.0\r\n\r\n",
    "garbage": "\x00\xff GET",
}
for i, (name, text) in enumerate(requests.items()):
    raw = text.encode("latin-1")
    for hub in range(3):
        flags = hub | ((i % 4) << 2)
        split = (i * 37 + hub * 101) % 256
        write("request", "%s_%d" % (name, hub), bytes([flags, split]) + raw)

lines = [
    '{"channel":"user:42","type":70,"data":{"subject":"hi"}}',
    '{"channels":["a","b","a"],"data":1}',
    '{"op":"stats"}',
    '{"op":"publish","channel":"x","data":null}',
    '{"op":"nope"}',
    "not json",
    '{"channel":"a","data":{"b":1.50,"a":"\\u00e9","c":[true,false,null,-0.0e-5]}}',
    '{"channel":"a","type":-9223372036854775808,"data":"\\ud83d\\ude00"}',
    '{"channel":"a","type":1.5,"data":1}',
    '{"channel":"a b","data":1}',
    '{"channels":[],"data":1}',
    '{"channel":"a","channel":"b","data":"dup"}',
    '{ "channel" : "a" , "data" : [ 1 , { "x" : "</script>\\n" } ] }',
    '[1]',
    '{"channel":"' + "x" * 128 + '","data":0}',
]
for i, line in enumerate(lines):
    write("publish_line", "line%02d" % i, line)
write("publish_line", "bad_utf8", b'{"channel":"a","data":"\xff"}')

cursors = [E1 + "0", EABC + "4b", "123456789abc02f", "ffffffffffffffffffffffffffff", E1, "", "zz"]
for i, c in enumerate(cursors):
    write("cursor", "text%02d" % i, c)
write("cursor", "pair", struct.pack("<QQ", 0xffff_1234_5678_9abc, 2**64 - 1))

for i, t in enumerate([GOOD, ALL_A, EXPIRED, OTHER_KEY, NONE_ALG,
                       jwt({"channels": ["a", "a", "bad name"], "exp": EXP_2100}),
                       jwt({"channels": ["a"], "exp": 1.5e10, "sub": None}),
                       jwt({"channels": ["a"], "exp": EXP_2100}, header={"alg": "HS256", "crit": ["x"]}),
                       "a.b.c", "e30.e30.e30"]):
    write("token", "raw%02d" % i, b"\x00" + t.encode())
for i, (mode, exp, names) in enumerate([
        (1, struct.pack("<Q", EXP_2100), "user:42\nnews"),
        (3, struct.pack("<hxxxxxx", 1), "a\na\nb"),
        (3, struct.pack("<hxxxxxx", 0), "a"),
        (7, struct.pack("<hxxxxxx", -5), "a\nsub\u00e9"),
        (1, struct.pack("<Q", EXP_2100), "bad name\nx"),
        (5, struct.pack("<Q", 2**64 - 1), "")]):
    write("token", "mint%02d" % i, bytes([mode]) + exp + struct.pack("<HB", i * 13, i + 1) + names.encode())
