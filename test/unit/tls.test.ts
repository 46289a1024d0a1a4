/**
 * TLS credentials (src/nbd/tls.ts): what an admin gets for each mistake, before any client
 * connects. Given a file set from makeTlsCreds (openssl), when one piece is wrong, then
 * loading fails with the expected-error class, the file named and a fix.
 */
import assert from 'node:assert/strict'
import * as fsp from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {NotFoundError, RefusedError, UsageError} from '../../src/errors/errors.js'
import {checkTcpListener, loadClientTls, loadServerTls, parsePskFile, pskCipherList, tlsDirectory} from '../../src/nbd/tls.js'
import {makeTlsCreds, type TlsCreds} from '../helpers/tlsCerts.js'

let parent: string
let c: TlsCreds

before(async () => {
  parent = await fsp.mkdtemp(join(tmpdir(), 'clonectl-tls-unit-'))
  c = makeTlsCreds(parent)
})

after(async () => {
  await fsp.rm(parent, {recursive: true, force: true})
})

/** Assert a rejection of this class whose message matches, and that it carries a fix. */
async function rejectsWith(p: Promise<unknown>, cls: typeof UsageError | typeof NotFoundError, message: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${String(e)}`)
    assert.match(e.message, message)
    assert.ok(e.fix, 'a fix is given')
    return true
  })
}

describe('loadServerTls', () => {
  test('a certificate, its key and a CA: x509 with client certificates verified', async () => {
    const t = await loadServerTls({cert: c.serverCert, key: c.serverKey, ca: c.caCert})
    assert.deepEqual(t.kinds, ['x509'])
    assert.equal(t.verifiesClients, true)
    assert.equal(t.options.requestCert, true)
    assert.equal(t.options.rejectUnauthorized, true)
    assert.equal(t.options.minVersion, 'TLSv1.2')
  })

  test('without a CA no client certificate is asked for; PSK alone works', async () => {
    assert.equal((await loadServerTls({cert: c.serverCert, key: c.serverKey})).verifiesClients, false)
    const psk = await loadServerTls({pskFile: c.pskFile})
    assert.deepEqual(psk.kinds, ['psk'])
    assert.deepEqual(psk.pskIdentities, [c.pskIdentity])
    const cb = psk.options.pskCallback!
    assert.deepEqual(cb(undefined as never, c.pskIdentity), Buffer.from(c.pskKeyHex, 'hex'))
    assert.equal(cb(undefined as never, 'mallory'), null)
  })

  test('a missing key file is NotFound, naming the file', async () => {
    const missing = join(parent, 'no-such-key.pem')
    await rejectsWith(loadServerTls({cert: c.serverCert, key: missing}), NotFoundError, new RegExp(`TLS key ${missing} does not exist`))
  })

  test('a key that does not match the certificate is refused, naming both', async () => {
    await rejectsWith(loadServerTls({cert: c.serverCert, key: c.clientKey}), UsageError, new RegExp(`TLS key ${c.clientKey} does not belong to certificate ${c.serverCert}`))
  })

  test('a certificate without its key, a CA without a certificate, no credentials at all', async () => {
    await rejectsWith(loadServerTls({cert: c.serverCert}), UsageError, /without its key/)
    await rejectsWith(loadServerTls({key: c.serverKey}), UsageError, /without its certificate/)
    await rejectsWith(loadServerTls({ca: c.caCert, pskFile: c.pskFile}), UsageError, /needs a server certificate/)
    await rejectsWith(loadServerTls({}), UsageError, /no TLS credentials/)
    await rejectsWith(loadServerTls({cert: c.serverCert, key: c.serverKey, requireClientCert: true}), UsageError, /without a CA/)
  })

  test('files that are not what they claim: a key as the certificate, a leaf as the CA', async () => {
    await rejectsWith(loadServerTls({cert: c.serverKey, key: c.serverKey}), UsageError, /holds no PEM certificate/)
    await rejectsWith(loadServerTls({cert: c.serverCert, key: c.serverCert}), UsageError, /is not a PEM private key/)
    await rejectsWith(loadServerTls({cert: c.serverCert, key: c.serverKey, ca: c.serverCert}), UsageError, /is not a CA/)
  })
})

describe('PSK files', () => {
  test('psktool lines; blank lines and comments skipped', () => {
    const keys = parsePskFile('# made by psktool\n\nalice:00ff\r\nbob:0A0b0C0d\n', 'k.psk')
    assert.deepEqual([...keys.keys()], ['alice', 'bob'])
    assert.deepEqual(keys.get('bob'), Buffer.from([10, 11, 12, 13]))
  })

  test('errors name the file and the line', () => {
    assert.throws(() => parsePskFile('alice:00ff\nbob\n', 'k.psk'), /k\.psk line 2 is not "identity:hexkey"/)
    assert.throws(() => parsePskFile('alice:0g\n', 'k.psk'), /k\.psk line 1: the key of "alice" is not an even number of hex digits/)
    assert.throws(() => parsePskFile('a:00\na:01\n', 'k.psk'), /identity "a" appears twice/)
    assert.throws(() => parsePskFile('\n# nothing\n', 'k.psk'), /holds no keys/)
  })

  test('the cipher list keeps PSK suites (Node\'s default ends in !PSK) and drops the SHA-384 TLS 1.3 suite', () => {
    const all = pskCipherList().split(':')
    assert.ok(!all.includes('!PSK'))
    assert.ok(all.includes('PSK-AES128-GCM-SHA256'))
    assert.ok(all.includes('ECDHE-RSA-AES128-GCM-SHA256'), 'certificate suites stay for x509 clients')
    assert.ok(!all.includes('TLS_AES_256_GCM_SHA384'))
    const only = pskCipherList(true).split(':')
    assert.ok(!only.some((s) => s.includes('RSA')), 'a PSK-only client offers no certificate suite')
  })

  test('loadClientTls picks the identity asked for, and says which exist when it is absent', async () => {
    const o = await loadClientTls({pskFile: c.pskFile})
    assert.deepEqual(o.pskCallback!(''), {identity: c.pskIdentity, psk: Buffer.from(c.pskKeyHex, 'hex')})
    await rejectsWith(loadClientTls({pskFile: c.pskFile, username: 'bob'}), UsageError, new RegExp(`no key for "bob"`))
  })
})

describe('tlsDirectory (qemu-style)', () => {
  test('maps the server files, CA and keys.psk', async () => {
    assert.deepEqual(await tlsDirectory(c.dir), {cert: c.serverCert, key: c.serverKey, ca: c.caCert, pskFile: c.pskFile})
    assert.deepEqual(await tlsDirectory(c.dir, 'client'), {cert: c.clientCert, key: c.clientKey, ca: c.caCert, pskFile: c.pskFile})
  })

  test('a PSK-only directory; a missing directory; a certificate without its key', async () => {
    const psk = join(parent, 'psk-only')
    await fsp.mkdir(psk)
    await fsp.copyFile(c.pskFile, join(psk, 'keys.psk'))
    await fsp.copyFile(c.caCert, join(psk, 'ca-cert.pem'))
    assert.deepEqual(await tlsDirectory(psk), {pskFile: join(psk, 'keys.psk')}, 'a CA verifies client certificates only beside a server certificate')
    await rejectsWith(tlsDirectory(join(parent, 'nope')), NotFoundError, /TLS directory .*nope does not exist/)
    const half = join(parent, 'half')
    await fsp.mkdir(half)
    await fsp.copyFile(c.serverCert, join(half, 'server-cert.pem'))
    await rejectsWith(tlsDirectory(half), UsageError, /has server-cert\.pem but not server-key\.pem/)
    const empty = join(parent, 'empty')
    await fsp.mkdir(empty)
    await rejectsWith(tlsDirectory(empty), UsageError, /has neither server-cert\.pem \+ server-key\.pem nor keys\.psk/)
  })
})

describe('checkTcpListener: a TCP listener that authenticates no client', () => {
  type Creds = {kinds: Array<'x509' | 'psk'>; verifiesClients: boolean}
  const x509: Creds = {kinds: ['x509'], verifiesClients: false}
  const x509ca: Creds = {kinds: ['x509'], verifiesClients: true}
  const psk: Creds = {kinds: ['psk'], verifiesClients: false}
  const both: Creds = {kinds: ['x509', 'psk'], verifiesClients: false}
  const at = (host: string, tls: Creds | undefined, required: boolean, allowUnauthenticated = false) => ({listen: `${host}:10809`, host, tls, required, allowUnauthenticated})

  test('client certificates or a PSK, required: no refusal, no warning, on any address', () => {
    assert.deepEqual(checkTcpListener(at('0.0.0.0', x509ca, true)), [])
    assert.deepEqual(checkTcpListener(at('::', psk, true)), [])
    assert.deepEqual(checkTcpListener(at('127.0.0.1', {kinds: ['x509', 'psk'], verifiesClients: true}, true)), [])
  })

  for (const [name, tls, required] of [
    ['no TLS', undefined, false],
    ['TLS not required', x509ca, false],
    ['a certificate without --tls-ca, required', x509, true],
    ['a PSK and a certificate without --tls-ca (a client may pick the certificate), required', both, true],
  ] as const) {
    test(`${name}: refused on a non-loopback address (RefusedError naming the risk and the fix), allowed with the opt-in (a warning)`, () => {
      assert.throws(
        () => checkTcpListener(at('0.0.0.0', tls, required)),
        (e: unknown) => {
          assert.ok(e instanceof RefusedError)
          assert.equal(e.exitCode, 5)
          assert.match(e.message, /^--listen 0\.0\.0\.0:10809 authenticates no client \(.+\): any client that reaches the port can read and overwrite the source$/)
          assert.match(e.fix ?? '', /--tls-ca.*--tls-psk.*--allow-unauthenticated/)
          return true
        },
      )
      const w = checkTcpListener(at('0.0.0.0', tls, required, true))
      assert.equal(w.length, 1)
      assert.match(w[0], /any client that reaches the port can read and overwrite the source \(allowed by --allow-unauthenticated\)/)
    })
    test(`${name}: on loopback a warning that every local user can use it, pointing to the unix socket`, () => {
      for (const host of ['127.0.0.1', '::1', 'localhost']) {
        const w = checkTcpListener(at(host, tls, required))
        assert.equal(w.length, 1)
        assert.match(w[0], /every user of this machine can connect and read and overwrite the source; use the unix socket instead/)
      }
    })
  }
})
