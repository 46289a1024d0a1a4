/**
 * NBD over TLS (NBD_OPT_STARTTLS, DESIGN §5) with clients nobody here wrote — qemu-io,
 * nbdinfo, nbdcopy (gnutls underneath) — and with Node's TLS client for what those cannot
 * show: the option replies before and after STARTTLS, a client that pipelines bytes after
 * STARTTLS, one that hangs up mid-handshake, PSK over TLS 1.2.
 *
 * Scenarios:
 *   given an in-process server with x509 (client certificates verified) + PSK, TLS required:
 *     qemu-io writes a pattern and reads it back over TLS; nbdinfo nbds:// reports the size;
 *     nbdcopy copies in and out and the files agree; PSK works from nbdinfo and qemu-io;
 *     a plaintext client is refused (qemu-io says TLS is required, with our message);
 *     a client trusting another CA, a client without a certificate, a wrong PSK all fail;
 *   given the same over the raw protocol: ERR_TLS_REQD before STARTTLS, EXPORT_NAME drops,
 *     STARTTLS with data is ERR_INVALID, STARTTLS inside TLS is ERR_INVALID, bytes pipelined
 *     after STARTTLS drop the connection, a mid-handshake hang-up frees the connection;
 *   given TLS configured but optional: plaintext clients are still served;
 *   given `clonectl serve G --listen 127.0.0.1:0 --tls-dir DIR --tls-required`: nbdinfo over
 *     TLS works, plaintext is refused; a listener that authenticates no client (no TLS, a
 *     certificate without --tls-ca, TLS not required) on 0.0.0.0 or [::] is refused with
 *     exit 5 unless --allow-unauthenticated (then a warning); on 127.0.0.1 it warns.
 *
 * The server under test lives in this process: every client is spawned asynchronously.
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {connect, type Socket} from 'node:net'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {connect as tlsConnect, type ConnectionOptions, type TLSSocket} from 'node:tls'
import type {ExportBackend} from '../../src/nbd/ExportBackend.js'
import {ByteQueue} from '../../src/nbd/ByteQueue.js'
import {NbdServer} from '../../src/nbd/NbdServer.js'
import {ClientFlag, Cmd, IHAVEOPT, NBDMAGIC, OPT_REPLY_MAGIC, Opt, Rep, SIMPLE_REPLY_MAGIC, encodeClientFlags, encodeGoData, encodeOption, encodeRequest} from '../../src/nbd/protocol.js'
import {loadClientTls, loadServerTls, tlsDirectory} from '../../src/nbd/tls.js'
import {MiB, clonectlOk, clonectlBin, has, run, sameContent, sleep, tempDir, needTool} from '../helpers/serve.js'
import {makeTlsCreds, type TlsCreds} from '../helpers/tlsCerts.js'
import {spawn, type ChildProcess} from 'node:child_process'

const SIZE = 16 * MiB
const needQemuIo = has('qemu-io', '--version') ? false : 'qemu-io (qemu-utils) is not installed'
const needNbdinfo = has('nbdinfo', '--version') ? false : 'nbdinfo (libnbd-bin) is not installed'
const needNbdcopy = has('nbdcopy', '--version') ? false : 'nbdcopy (libnbd-bin) is not installed'
const needOpenssl = has('openssl', 'version') ? false : 'openssl is not installed'

class MemBackend implements ExportBackend {
  readonly mem = Buffer.alloc(SIZE)
  readonly size = SIZE
  readonly readOnly = false
  async read(offset: number, length: number): Promise<Buffer> {
    return Buffer.from(this.mem.subarray(offset, offset + length))
  }
  async write(offset: number, data: Buffer): Promise<void> {
    data.copy(this.mem, offset)
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.mem.fill(0, offset, offset + length)
  }
  trim(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length)
  }
  async flush(): Promise<void> {}
}

let dir: string
let creds: TlsCreds
/** A qemu-style client dir trusting another CA (with a valid client certificate). */
let otherCaDir: string
/** A client dir with the right CA and no client certificate. */
let noCertDir: string
let backend: MemBackend
/** x509 (client certificates verified) + PSK, TLS required. */
let server: NbdServer
let port: number
/** x509 without client verification, TLS optional. */
let optional: NbdServer
let optionalPort: number
const logs: string[] = []
const children = new Set<ChildProcess>()

before(async () => {
  dir = await tempDir('tls')
  creds = makeTlsCreds(dir)
  otherCaDir = join(dir, 'otherca')
  noCertDir = join(dir, 'nocert')
  await fsp.mkdir(otherCaDir)
  await fsp.mkdir(noCertDir)
  await fsp.copyFile(creds.otherCaCert, join(otherCaDir, 'ca-cert.pem'))
  await fsp.copyFile(creds.clientCert, join(otherCaDir, 'client-cert.pem'))
  await fsp.copyFile(creds.clientKey, join(otherCaDir, 'client-key.pem'))
  await fsp.copyFile(creds.caCert, join(noCertDir, 'ca-cert.pem'))
  backend = new MemBackend()
  const tls = await loadServerTls(await tlsDirectory(creds.dir))
  assert.deepEqual(tls.kinds, ['x509', 'psk'], 'the helper directory holds certificates and keys.psk')
  assert.equal(tls.verifiesClients, true)
  server = new NbdServer(backend, {tls: {options: tls.options, required: true}, log: (m) => logs.push(m), handshakeTimeoutMs: 20_000})
  port = await server.listenTcp('127.0.0.1', 0)
  const opt = await loadServerTls({cert: creds.serverCert, key: creds.serverKey})
  optional = new NbdServer(backend, {tls: {options: opt.options, required: false}, log: (m) => logs.push(m)})
  optionalPort = await optional.listenTcp('127.0.0.1', 0)
})

after(async () => {
  for (const c of children) c.kill('SIGKILL')
  await server?.close()
  await optional?.close()
  await fsp.rm(dir, {recursive: true, force: true})
})

const nbds = (query: string, user = ''): string => `nbds://${user}127.0.0.1:${port}/?${query}`
const qemuX509 = (d: string): string[] => ['--object', `tls-creds-x509,id=tls0,dir=${d},endpoint=client`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=,tls-creds=tls0`]

async function waitConnections(s: NbdServer, n: number, timeoutMs = 5000): Promise<void> {
  const t0 = Date.now()
  while (s.connections !== n) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`server has ${s.connections} connections, expected ${n}`)
    await sleep(10)
  }
}

describe('real clients over TLS (x509 + PSK, TLS required)', () => {
  test('qemu-io writes a pattern over TLS and reads it back', async () => {
    needTool(needQemuIo)
    const r = await run('qemu-io', [...qemuX509(creds.dir), '-c', 'write -P 0x5a 1M 2M', '-c', 'read -P 0x5a 1M 2M', '-c', 'read -P 0 0 1M'], {timeoutMs: 30_000})
    assert.equal(r.code, 0, r.stderr + r.stdout)
    assert.doesNotMatch(r.stdout, /Pattern verification failed/)
    assert.ok(backend.mem.subarray(MiB, 3 * MiB).every((b) => b === 0x5a), 'the backend holds the pattern')
  })

  test('nbdinfo nbds:// with tls-certificates reports the size and TLS', async () => {
    needTool(needNbdinfo)
    const r = await run('nbdinfo', ['--json', nbds(`tls-certificates=${creds.dir}`)], {timeoutMs: 30_000})
    assert.equal(r.code, 0, r.stderr)
    const info = JSON.parse(r.stdout) as {protocol: string; TLS: boolean; exports: Array<{'export-size': number}>}
    assert.equal(info.exports[0]['export-size'], SIZE)
    assert.equal(info.TLS, true)
  })

  test('nbdcopy copies in and out over TLS and the files agree', async () => {
    needTool(needNbdcopy)
    const src = join(dir, 'in.img')
    const out = join(dir, 'out.img')
    await fsp.writeFile(src, randomBytes(SIZE))
    const uri = nbds(`tls-certificates=${creds.dir}`)
    let r = await run('nbdcopy', [src, uri], {timeoutMs: 60_000})
    assert.equal(r.code, 0, r.stderr)
    r = await run('nbdcopy', [uri, out], {timeoutMs: 60_000})
    assert.equal(r.code, 0, r.stderr)
    assert.ok(await sameContent(src, out), 'what came out over TLS is what went in')
  })

  test('PSK: nbdinfo with tls-psk-file and qemu-io with tls-creds-psk', async () => {
    needTool(needNbdinfo || needQemuIo)
    const r = await run('nbdinfo', ['--size', nbds(`tls-psk-file=${creds.pskFile}`, `${creds.pskIdentity}@`)], {timeoutMs: 30_000})
    assert.equal(r.code, 0, r.stderr)
    assert.equal(Number(r.stdout.trim()), SIZE)
    const q = await run('qemu-io', ['--object', `tls-creds-psk,id=tls0,dir=${creds.dir},endpoint=client,username=${creds.pskIdentity}`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=,tls-creds=tls0`, '-c', 'write -P 0x33 0 64k', '-c', 'read -P 0x33 0 64k'], {timeoutMs: 30_000})
    assert.equal(q.code, 0, q.stderr + q.stdout)
    assert.doesNotMatch(q.stdout, /Pattern verification failed/)
  })

  test('a plaintext client is refused with a clear message', async () => {
    needTool(needQemuIo || needNbdinfo)
    const q = await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${port}/`, '-c', 'read 0 4k'], {timeoutMs: 30_000})
    assert.notEqual(q.code, 0)
    assert.match(q.stderr, /TLS negotiation required/)
    assert.match(q.stderr, /TLS is required: send NBD_OPT_STARTTLS first/)
    const r = await run('nbdinfo', [`nbd://127.0.0.1:${port}/`], {timeoutMs: 30_000})
    assert.notEqual(r.code, 0, 'nbdinfo without TLS must fail')
    assert.match(r.stderr, /opt_go/)
  })

  test('a client trusting another CA, one without a certificate, and a wrong PSK all fail', async () => {
    needTool(needNbdinfo)
    const other = await run('nbdinfo', ['--size', nbds(`tls-certificates=${otherCaDir}`)], {timeoutMs: 30_000})
    assert.notEqual(other.code, 0, 'the server certificate must not verify against another CA')
    assert.match(other.stderr, /certificate verification|handshake/i)
    const noCert = await run('nbdinfo', ['--size', nbds(`tls-certificates=${noCertDir}`)], {timeoutMs: 30_000})
    assert.notEqual(noCert.code, 0, 'the server requires a client certificate')
    const wrong = join(dir, 'wrong.psk')
    await fsp.writeFile(wrong, `${creds.pskIdentity}:${'00'.repeat(32)}\n`, {mode: 0o600})
    const bad = await run('nbdinfo', ['--size', nbds(`tls-psk-file=${wrong}`, `${creds.pskIdentity}@`)], {timeoutMs: 30_000})
    assert.notEqual(bad.code, 0, 'a wrong key must not connect')
    await waitConnections(server, 0)
  })
})

// ---------------------------------------------------------------------------------------
// The raw protocol, from a Node client of our own.

interface OptReply {
  option: number
  type: number
  data: Buffer
}

/** Fixed newstyle option haggling over a socket that STARTTLS may swap for a TLS socket. */
class OptClient {
  private readonly q = new ByteQueue()
  private wake?: () => void
  closed = false
  private constructor(public s: Socket) {
    this.bind(s)
  }

  private readonly onData = (b: Buffer): void => {
    this.q.push(b)
    this.wake?.()
  }

  private bind(s: Socket): void {
    s.on('data', this.onData)
    s.on('close', () => {
      this.closed = true
      this.wake?.()
    })
    s.on('error', () => undefined)
  }

  static async connect(p: number): Promise<OptClient> {
    const s = connect(p, '127.0.0.1')
    await new Promise<void>((r, j) => {
      s.once('connect', () => r())
      s.once('error', j)
    })
    const c = new OptClient(s)
    const g = await c.read(18)
    assert.equal(g.readBigUInt64BE(0), NBDMAGIC)
    assert.equal(g.readBigUInt64BE(8), IHAVEOPT)
    s.write(encodeClientFlags(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES))
    return c
  }

  async read(n: number, timeoutMs = 10_000): Promise<Buffer> {
    const t0 = Date.now()
    while (this.q.length < n) {
      if (this.closed) throw new Error('connection closed')
      if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${n} bytes`)
      await new Promise<void>((r) => {
        this.wake = r
        setTimeout(r, 50)
      })
    }
    return Buffer.from(this.q.take(n))
  }

  async reply(): Promise<OptReply> {
    const h = await this.read(20)
    assert.equal(h.readBigUInt64BE(0), OPT_REPLY_MAGIC)
    return {option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(h.readUInt32BE(16))}
  }

  /** Send one option; its replies up to ACK or an error. */
  async option(option: number, data?: Buffer): Promise<OptReply[]> {
    this.s.write(encodeOption(option, data))
    const out: OptReply[] = []
    for (;;) {
      const r = await this.reply()
      out.push(r)
      if (r.type === Rep.ACK || r.type >= 0x80000000) return out
    }
  }

  /** STARTTLS, then the client handshake on the same socket; later I/O goes over TLS. */
  async starttls(opts: ConnectionOptions): Promise<TLSSocket> {
    const [r] = await this.option(Opt.STARTTLS)
    assert.equal(r.type, Rep.ACK, 'STARTTLS is acknowledged')
    this.s.off('data', this.onData)
    const t = tlsConnect({...opts, socket: this.s, servername: opts.servername ?? (opts.pskCallback ? undefined : 'localhost')})
    await new Promise<void>((resolve, reject) => {
      t.once('secureConnect', () => resolve())
      t.once('error', reject)
    })
    this.s = t
    this.bind(t)
    return t
  }

  /** OPT_GO on the default export, then READ at 0; returns the data. */
  async goAndRead(length: number): Promise<Buffer> {
    const replies = await this.option(Opt.GO, encodeGoData('', []))
    assert.equal(replies.at(-1)!.type, Rep.ACK, `GO failed: 0x${replies.at(-1)!.type.toString(16)}`)
    this.s.write(encodeRequest({flags: 0, type: Cmd.READ, cookie: 7n, offset: 0n, length}))
    const h = await this.read(16)
    assert.equal(h.readUInt32BE(0), SIMPLE_REPLY_MAGIC)
    assert.equal(h.readUInt32BE(4), 0, 'READ succeeds')
    return this.read(length)
  }

  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const t0 = Date.now()
    while (!this.closed && Date.now() - t0 < timeoutMs) await sleep(10)
    return this.closed
  }

  destroy(): void {
    this.s.destroy()
  }
}

describe('STARTTLS in the protocol (Node client)', () => {
  const x509 = (): Promise<ConnectionOptions> => loadClientTls({ca: creds.caCert, cert: creds.clientCert, key: creds.clientKey})

  test('TLS required: options before STARTTLS get ERR_TLS_REQD (ABORT excepted); inside TLS they work and STARTTLS is ERR_INVALID', async () => {
    const c = await OptClient.connect(port)
    for (const o of [Opt.LIST, Opt.GO, Opt.INFO, Opt.STRUCTURED_REPLY, 99]) {
      const [r] = await c.option(o, o === Opt.GO || o === Opt.INFO ? encodeGoData('', []) : undefined)
      assert.equal(r.type, Rep.ERR_TLS_REQD, `option ${o} before TLS`)
    }
    const [withData] = await c.option(Opt.STARTTLS, Buffer.from('x'))
    assert.equal(withData.type, Rep.ERR_INVALID, 'STARTTLS takes no data')
    const t = await c.starttls(await x509())
    assert.equal(t.authorized, true)
    const list = await c.option(Opt.LIST)
    assert.equal(list.at(-1)!.type, Rep.ACK, 'LIST works inside TLS')
    const [again] = await c.option(Opt.STARTTLS)
    assert.equal(again.type, Rep.ERR_INVALID, 'STARTTLS inside TLS')
    backend.mem.fill(0x77, 0, 4096)
    assert.ok((await c.goAndRead(4096)).every((b) => b === 0x77), 'transmission runs over TLS')
    c.destroy()
  })

  test('TLS required: NBD_OPT_EXPORT_NAME before STARTTLS drops the connection', async () => {
    const c = await OptClient.connect(port)
    c.s.write(encodeOption(Opt.EXPORT_NAME, Buffer.alloc(0)))
    assert.ok(await c.waitClosed(), 'the server closes: EXPORT_NAME has no error reply')
    assert.ok(logs.some((l) => /EXPORT_NAME before STARTTLS/.test(l)))
  })

  test('ABORT before STARTTLS is answered', async () => {
    const c = await OptClient.connect(port)
    const [r] = await c.option(Opt.ABORT)
    assert.equal(r.type, Rep.ACK)
    assert.ok(await c.waitClosed())
  })

  test('bytes pipelined after STARTTLS (before its ACK) drop the connection', async () => {
    const c = await OptClient.connect(port)
    c.s.write(Buffer.concat([encodeOption(Opt.STARTTLS), encodeOption(Opt.LIST)]))
    assert.ok(await c.waitClosed(), 'dropped')
    assert.ok(logs.some((l) => /bytes sent after NBD_OPT_STARTTLS/.test(l)), logs.join('\n'))
  })

  test('a client that hangs up in the middle of the TLS handshake frees its connection', async () => {
    const before = server.connections
    const c = await OptClient.connect(port)
    const [r] = await c.option(Opt.STARTTLS)
    assert.equal(r.type, Rep.ACK)
    c.s.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01])) // a truncated ClientHello
    c.s.end()
    await waitConnections(server, before)
  })

  test('PSK from Node: TLS 1.3 and TLS 1.2 (PSK cipher suites); an unknown identity fails', async () => {
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2'] as const) {
      const c = await OptClient.connect(port)
      const t = await c.starttls({...(await loadClientTls({pskFile: creds.pskFile})), maxVersion})
      assert.equal(t.getProtocol(), maxVersion)
      if (maxVersion === 'TLSv1.2') assert.match(t.getCipher().name, /PSK/)
      backend.mem.fill(0x42, 0, 512)
      assert.ok((await c.goAndRead(512)).every((b) => b === 0x42))
      c.destroy()
    }
    const unknown = join(dir, 'unknown.psk')
    await fsp.writeFile(unknown, `mallory:${'ab'.repeat(32)}\n`)
    const c = await OptClient.connect(port)
    await assert.rejects(c.starttls({...(await loadClientTls({pskFile: unknown})), maxVersion: 'TLSv1.2'}))
    c.destroy()
  })

  test('a client certificate from another CA is refused after the handshake', async () => {
    needTool(needOpenssl)
    // Sign a client certificate with the other CA (the helper keeps its key beside it).
    const evil = join(dir, 'evil')
    await fsp.mkdir(evil)
    const {execFileSync} = await import('node:child_process')
    execFileSync('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=mallory', '-keyout', join(evil, 'key.pem'), '-out', join(evil, 'csr.pem')], {stdio: 'ignore'})
    execFileSync('openssl', ['x509', '-req', '-in', join(evil, 'csr.pem'), '-CA', creds.otherCaCert, '-CAkey', join(creds.dir, 'otherca-key.pem'), '-CAcreateserial', '-days', '1', '-out', join(evil, 'cert.pem')], {stdio: 'ignore'})
    const c = await OptClient.connect(port)
    const opts = await loadClientTls({ca: creds.caCert, cert: join(evil, 'cert.pem'), key: join(evil, 'key.pem')})
    // TLS 1.3 finishes the client's side before the server has checked its certificate.
    await c.starttls(opts).catch(() => undefined)
    await assert.rejects(c.option(Opt.LIST), 'no option is answered to an unverified client')
    assert.ok(await c.waitClosed())
    assert.ok(logs.some((l) => /client certificate refused/.test(l)), logs.join('\n'))
  })

  test('TLS optional: plaintext clients are served, TLS clients too', async () => {
    const plain = await OptClient.connect(optionalPort)
    backend.mem.fill(0x11, 0, 512)
    assert.ok((await plain.goAndRead(512)).every((b) => b === 0x11))
    plain.destroy()
    const c = await OptClient.connect(optionalPort)
    await c.starttls(await loadClientTls({ca: creds.caCert}))
    assert.ok((await c.goAndRead(512)).every((b) => b === 0x11))
    c.destroy()
  })

  test('close() ends TLS connections in transmission and in the handshake', async () => {
    const extra = new NbdServer(backend, {tls: {options: (await loadServerTls({cert: creds.serverCert, key: creds.serverKey})).options, required: true}})
    const p = await extra.listenTcp('127.0.0.1', 0)
    const a = await OptClient.connect(p)
    await a.starttls(await loadClientTls({ca: creds.caCert}))
    await a.goAndRead(512)
    const b = await OptClient.connect(p)
    await b.option(Opt.STARTTLS) // ACK, then no handshake
    await extra.close()
    assert.equal(extra.connections, 0)
    assert.ok(await a.waitClosed())
    assert.ok(await b.waitClosed())
  })
})

// ---------------------------------------------------------------------------------------
// Through the CLI.

/** `clonectl serve ...` in the background until "serving group"; the TCP port it printed. */
async function startCliServe(state: string, args: string[]): Promise<{proc: ChildProcess; stderr: () => string; port: number}> {
  const proc = spawn(process.execPath, [clonectlBin, 'serve', ...args, '--state-dir', state], {stdio: ['ignore', 'pipe', 'pipe']})
  children.add(proc)
  proc.on('exit', () => children.delete(proc))
  let err = ''
  proc.stderr!.on('data', (b: Buffer) => (err += b.toString('utf8')))
  proc.stdout!.on('data', (b: Buffer) => (err += b.toString('utf8')))
  const t0 = Date.now()
  while (!/serving group/.test(err)) {
    if (proc.exitCode !== null) throw new Error(`serve exited ${proc.exitCode}:\n${err}`)
    if (Date.now() - t0 > 20_000) throw new Error(`serve did not start:\n${err}`)
    await sleep(20)
  }
  const m = /nbds?:\/\/(?:\[[^\]]*\]|[^:/]+):(\d+)\//.exec(err)
  return {proc, stderr: () => err, port: m ? Number(m[1]) : 0}
}

async function stopCli(proc: ChildProcess): Promise<number | null> {
  if (proc.exitCode !== null) return proc.exitCode
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)))
  proc.kill('SIGTERM')
  return exited
}

describe('clonectl serve with TLS', () => {
  let state: string
  before(async () => {
    state = join(dir, 'state')
    const src = join(dir, 'src.img')
    await fsp.writeFile(src, '')
    await fsp.truncate(src, 8 * MiB)
    await clonectlOk(state, ['group', 'create', 'g', '--source', src])
  })

  test('--tls-dir --tls-required: nbdinfo over TLS works, plaintext is refused', async () => {
    needTool(needNbdinfo)
    const s = await startCliServe(state, ['g', '--listen', '127.0.0.1:0', '--tls-dir', creds.dir, '--tls-required'])
    try {
      assert.match(s.stderr(), /nbds:\/\/127\.0\.0\.1:\d+\/ \(TLS x509 \+ psk, client certificates verified, required\)/)
      assert.doesNotMatch(s.stderr(), /Warning/)
      const ok = await run('nbdinfo', ['--size', `nbds://127.0.0.1:${s.port}/?tls-certificates=${creds.dir}`], {timeoutMs: 30_000})
      assert.equal(ok.code, 0, ok.stderr + s.stderr())
      assert.equal(Number(ok.stdout.trim()), 8 * MiB)
      const plain = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${s.port}/`], {timeoutMs: 30_000})
      assert.notEqual(plain.code, 0, 'plaintext refused')
    } finally {
      assert.equal(await stopCli(s.proc), 0)
    }
  })

  test('a listener that authenticates no client is refused on 0.0.0.0 (exit 5) with the risk and the fix in words', async () => {
    const serveArgs = (extra: string[]): string[] => [clonectlBin, 'serve', 'g', '--state-dir', state, ...extra]
    for (const extra of [
      ['--listen', '0.0.0.0:0'],
      ['--listen', '0.0.0.0:0', '--tls-cert', creds.serverCert, '--tls-key', creds.serverKey, '--tls-required'],
      ['--listen', '[::]:0', '--tls-dir', creds.dir],
    ]) {
      const r = await run(process.execPath, serveArgs(extra), {timeoutMs: 30_000})
      assert.equal(r.code, 5, `${extra.join(' ')}: ${r.stderr}`)
      assert.match(r.stderr, /authenticates no client .*any client that reaches the port can read and overwrite the source/)
      assert.match(r.stderr, /--tls-ca/)
      assert.match(r.stderr, /--tls-psk/)
      assert.match(r.stderr, /--allow-unauthenticated/)
      assert.doesNotMatch(r.stderr, /serving group/)
    }
  })

  test('with --allow-unauthenticated it serves, and warns; the printed IPv6 URI is bracketed', async () => {
    const s = await startCliServe(state, ['g', '--listen', '[::]:0', '--tls-cert', creds.serverCert, '--tls-key', creds.serverKey, '--tls-required', '--allow-unauthenticated'])
    try {
      assert.match(s.stderr(), /Warning:.*--listen \[::\]:0 authenticates no client \(TLS without --tls-ca checks no client certificate.*any client that reaches the port can read and overwrite the source/)
      assert.match(s.stderr(), / and nbds:\/\/\[::\]:\d+\/ /, 'after the unix socket, which --listen keeps')
    } finally {
      assert.equal(await stopCli(s.proc), 0)
    }
  })

  test('--listen 127.0.0.1 without TLS serves and warns that every local user can read and write the source, pointing to the unix socket', async () => {
    const s = await startCliServe(state, ['g', '--listen', '127.0.0.1:0'])
    try {
      assert.match(s.stderr(), /Warning:.*--listen 127\.0\.0\.1:0 authenticates no client \(plain TCP without TLS\): every user of this machine can connect and read and overwrite the source; use the unix socket instead/)
    } finally {
      assert.equal(await stopCli(s.proc), 0)
    }
  })

  test('bad TLS flags fail before serving, naming the file and the fix', async () => {
    const noCreds = await run(process.execPath, [clonectlBin, 'serve', 'g', '--tls-required', '--state-dir', state], {timeoutMs: 30_000})
    assert.equal(noCreds.code, 2, noCreds.stderr)
    assert.match(noCreds.stderr, /--tls-required needs TLS credentials/)
    const missing = join(dir, 'nope-key.pem')
    const noKey = await run(process.execPath, [clonectlBin, 'serve', 'g', '--tls-cert', creds.serverCert, '--tls-key', missing, '--state-dir', state], {timeoutMs: 30_000})
    assert.equal(noKey.code, 3, noKey.stderr)
    assert.match(noKey.stderr, new RegExp(`TLS key ${missing} does not exist`))
    const mismatch = await run(process.execPath, [clonectlBin, 'serve', 'g', '--tls-cert', creds.serverCert, '--tls-key', creds.clientKey, '--state-dir', state], {timeoutMs: 30_000})
    assert.equal(mismatch.code, 2, mismatch.stderr)
    assert.match(mismatch.stderr, /does not belong to certificate/)
  })
})
