/**
 * NBD URIs (NetworkBlockDevice/nbd doc/uri.md): every form clonectl accepts, and malformed
 * ones refused with a UsageError that names the URI and says how to write it.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {UsageError} from '../../src/errors/errors.js'
import {NBD_DEFAULT_PORT, describeTransport, parseNbdUri, tcpNbdUri, unixNbdUri} from '../../src/nbd/nbdUri.js'

describe('parseNbdUri: the forms of the standard', () => {
  test('nbd://host/export is TCP on the default port 10809, without TLS', () => {
    const u = parseNbdUri('nbd://example.com/disk')
    assert.deepEqual(u, {uri: 'nbd://example.com/disk', tls: false, transport: {kind: 'tcp', host: 'example.com', port: NBD_DEFAULT_PORT}, exportName: 'disk'})
  })

  test('an explicit port is used', () => {
    assert.deepEqual(parseNbdUri('nbd://10.0.0.5:10810/x').transport, {kind: 'tcp', host: '10.0.0.5', port: 10810})
  })

  test('the export-name table of the standard: empty, "//disk" and percent-escapes', () => {
    const cases: Array<[string, string]> = [
      ['nbd://example.com/disk', 'disk'],
      ['nbd+unix:///disk?socket=sock', 'disk'],
      ['nbd://example.com/', ''],
      ['nbd://example.com', ''],
      ['nbd://example.com//disk', '/disk'],
      ['nbd://example.com/hello%20world', 'hello world'],
      ['nbd://example.com/a%2Fb%3Fc', 'a/b?c'],
      ['nbd://example.com/caf%C3%A9', 'café'],
    ]
    for (const [uri, name] of cases) assert.equal(parseNbdUri(uri).exportName, name, uri)
  })

  test('nbds:// asks for TLS; nbds+unix:// too', () => {
    assert.equal(parseNbdUri('nbds://h/x').tls, true)
    const u = parseNbdUri('nbds+unix:///x?socket=/run/a.sock')
    assert.equal(u.tls, true)
    assert.deepEqual(u.transport, {kind: 'unix', path: '/run/a.sock'})
  })

  test('nbd+unix:///export?socket=PATH is a unix socket; "+" in the path stays a "+"', () => {
    const u = parseNbdUri('nbd+unix:///exp?socket=/tmp/a+b%20c.sock')
    assert.deepEqual(u.transport, {kind: 'unix', path: '/tmp/a+b c.sock'})
    assert.equal(u.exportName, 'exp')
    assert.equal(u.tls, false)
  })

  test('an abstract unix socket (%00 prefix) is kept as a leading NUL', () => {
    const u = parseNbdUri('nbd+unix:///?socket=%00/abstract')
    assert.deepEqual(u.transport, {kind: 'unix', path: '\0/abstract'})
    assert.equal(describeTransport(u.transport), 'unix socket @/abstract')
  })

  test('IPv6 literals in brackets, with and without a port', () => {
    assert.deepEqual(parseNbdUri('nbd://[::1]/x').transport, {kind: 'tcp', host: '::1', port: 10809})
    assert.deepEqual(parseNbdUri('nbd://[fe80::1:2]:10900/x').transport, {kind: 'tcp', host: 'fe80::1:2', port: 10900})
    assert.equal(describeTransport(parseNbdUri('nbd://[::1]:5/x').transport), '[::1]:5')
  })

  test('the scheme is case-insensitive', () => {
    assert.equal(parseNbdUri('NBDS://h/x').tls, true)
  })

  test('TLS parameters: tls-certificates, tls-psk-file, tls-username, tls-hostname, tls-verify-peer, tls-type', () => {
    const x = parseNbdUri('nbds://h/x?tls-certificates=/etc/pki/qemu&tls-hostname=server.example&tls-verify-peer=0&tls-type=x509')
    assert.equal(x.tlsCertificates, '/etc/pki/qemu')
    assert.equal(x.tlsHostname, 'server.example')
    assert.equal(x.tlsVerifyPeer, false)
    assert.equal(x.tlsType, 'x509')
    const p = parseNbdUri('nbds+unix:///x?socket=/s&tls-psk-file=/etc/keys.psk&tls-username=alice')
    assert.equal(p.tlsPskFile, '/etc/keys.psk')
    assert.equal(p.tlsUsername, 'alice')
  })

  test('the userinfo of the authority is the TLS user name', () => {
    assert.equal(parseNbdUri('nbds://alice@h/x?tls-psk-file=/k').tlsUsername, 'alice')
  })

  test('experimental x-… parameters are ignored', () => {
    assert.equal(parseNbdUri('nbd://h/x?x-foo=1').exportName, 'x')
  })
})

describe('parseNbdUri: malformed URIs are refused with a UsageError naming the URI', () => {
  const refused: Array<[string, RegExp]> = [
    ['/srv/a.img', /not an NBD URI/],
    ['http://h/x', /unsupported scheme "http"/],
    ['nbd:h/x', /expected "\/\/" after the scheme/],
    ['nbd:///x', /names no host/],
    ['nbd://h:0/x', /port "0"/],
    ['nbd://h:65536/x', /port "65536"/],
    ['nbd://h:abc/x', /port "abc"/],
    ['nbd://[::1/x', /not closed/],
    ['nbd://[zz]/x', /not an IPv6 address/],
    ['nbd://::1/x', /IPv6 address without brackets/],
    ['nbd://[::1]x/x', /after the IPv6 address/],
    ['nbd://h/x#frag', /fragment/],
    ['nbd://h/%zz', /malformed percent-escape/],
    ['nbd://h/a%00b', /NUL/],
    [`nbd://h/${'a'.repeat(4097)}`, /longer than 4096 bytes/],
    ['nbd://h/x?foo=1', /unknown query parameter "foo"/],
    ['nbd://h/x?socket=/s', /\?socket= is for nbd\+unix/],
    ['nbd+unix:///x', /needs \?socket=PATH/],
    ['nbd+unix:///x?socket=', /needs \?socket=PATH/],
    ['nbd+unix://host/x?socket=/s', /names no host/],
    ['nbd+unix:///x?socket=/a&socket=/b', /given twice/],
    ['nbd://h/x?tls-certificates=/d', /only applies to TLS/],
    ['nbd://alice@h/x', /only applies to TLS/],
    ['nbds://h/x?tls-certificates=/d&tls-psk-file=/k', /both given/],
    ['nbds://h/x?tls-certificates=', /need a path/],
    ['nbds://h/x?tls-verify-peer=maybe', /tls-verify-peer=maybe/],
    ['nbds://h/x?tls-type=kerberos', /tls-type=kerberos/],
    ['nbds://h/x?tls-type=psk&tls-certificates=/d', /tls-type=psk with tls-certificates/],
    ['nbds://alice@h/x?tls-username=bob&tls-psk-file=/k', /differ/],
    ['nbd://h%/x', /malformed percent-escape/],
    ['nbd://bad_host!/x', /not a host name/],
  ]
  for (const [uri, why] of refused) {
    test(`refuses ${uri.length > 60 ? `${uri.slice(0, 40)}…` : uri}`, () => {
      assert.throws(
        () => parseNbdUri(uri),
        (e: unknown) => {
          assert.ok(e instanceof UsageError, `UsageError, got ${String(e)}`)
          assert.match(e.message, why)
          assert.ok(e.message.includes(uri.slice(0, 40)), 'the message names the URI')
          assert.ok(e.fix && e.fix.length > 0, 'a fix is given')
          assert.equal(e.exitCode, 2)
          return true
        },
      )
    })
  }
})

describe('URIs printed for listeners', () => {
  test('an IPv6 listener address is bracketed, and the URI parses back to it', () => {
    assert.equal(tcpNbdUri('::', 10913), 'nbd://[::]:10913/')
    assert.equal(tcpNbdUri('::1', 10809, true), 'nbds://[::1]:10809/')
    assert.deepEqual(parseNbdUri(tcpNbdUri('fe80::1', 7)).transport, {kind: 'tcp', host: 'fe80::1', port: 7})
  })
  test('IPv4 and names are printed as they are', () => {
    assert.equal(tcpNbdUri('0.0.0.0', 10809), 'nbd://0.0.0.0:10809/')
    assert.equal(tcpNbdUri('db1-host', 1, true), 'nbds://db1-host:1/')
    assert.equal(unixNbdUri('/run/x.sock'), 'nbd+unix:///?socket=/run/x.sock')
  })
})
