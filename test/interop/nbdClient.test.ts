/**
 * NbdClient and NbdVolume against NBD servers: clonectl's own NbdServer (in-process),
 * qemu-nbd and nbdkit (file plugin, with filters for block-size policy, injected errors,
 * delays and no WRITE_ZEROES), over unix sockets, TCP and TLS; and against small fake
 * servers in this file for what no real server does on request (no NBD_OPT_GO, a
 * blackhole, protocol violations). A test whose real server is missing fails, naming it.
 *
 * Every child process is killed in after(); every temp dir is a fresh mkdtemp.
 */
import assert from 'node:assert/strict'
import {spawn, type ChildProcess} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {copyFileSync, mkdtempSync} from 'node:fs'
import * as fsp from 'node:fs/promises'
import {connect as netConnect, createServer, type Server, type Socket} from 'node:net'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {RemoteError, UsageError, VolumeIoError} from '../../src/errors/errors.js'
import type {ExportBackend} from '../../src/nbd/ExportBackend.js'
import {NbdClient} from '../../src/nbd/NbdClient.js'
import {NbdServer} from '../../src/nbd/NbdServer.js'
import {
  Cmd,
  Opt,
  REQUEST_SIZE,
  Rep,
  STRUCTURED_REPLY_MAGIC,
  TxFlag,
  decodeOptionHeader,
  decodeRequest,
  encodeExportNameReply,
  encodeOptionReply,
  encodeServerGreeting,
  encodeSimpleReply,
} from '../../src/nbd/protocol.js'
import {NbdVolume} from '../../src/volume/NbdVolume.js'
import {MiB, has, prng, sleep, socketLive, tempDir, needTool} from '../helpers/serve.js'
import {makeTlsCreds, type TlsCreds} from '../helpers/tlsCerts.js'

const needQemuNbd = has('qemu-nbd', '--version') ? false : 'qemu-nbd (qemu-utils) is not installed'
const needNbdkit = has('nbdkit', '--version') ? false : 'nbdkit is not installed'
const needOpenssl = has('openssl', 'version') ? false : 'openssl is not installed'

const SIZE = 64 * MiB
const children = new Set<ChildProcess>()
const servers: Array<{close: () => unknown}> = []
let dir: string

before(async () => {
  dir = await tempDir('nbdclient')
})

after(async () => {
  for (const c of children) c.kill('SIGKILL')
  for (const s of servers) await s.close()
  await fsp.rm(dir, {recursive: true, force: true})
})

/** A sparse image of `size` bytes in the test's temp dir. */
async function image(name: string, size = SIZE): Promise<string> {
  const p = join(dir, name)
  await fsp.writeFile(p, '')
  await fsp.truncate(p, size)
  return p
}

async function fileBytes(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await fsp.open(path, 'r')
  try {
    const b = Buffer.alloc(length)
    await fh.read(b, 0, length, offset)
    return b
  } finally {
    await fh.close()
  }
}

/** A TCP port free right now (the kernel's pick for port 0). */
async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const port = (s.address() as {port: number}).port
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

function tcpAccepts(port: number): Promise<boolean> {
  return new Promise((r) => {
    const c = netConnect(port, '127.0.0.1')
    c.once('connect', () => {
      c.destroy()
      r(true)
    })
    c.once('error', () => r(false))
  })
}

interface Daemon {
  proc: ChildProcess
  stderr: () => string
  kill: () => Promise<void>
}

/** Start a server in the background; resolves once its unix socket or TCP port accepts. */
async function daemon(cmd: string, args: string[], ready: {socket: string} | {port: number}): Promise<Daemon> {
  const proc = spawn(cmd, args, {stdio: ['ignore', 'ignore', 'pipe']})
  children.add(proc)
  let err = ''
  proc.stderr!.on('data', (b: Buffer) => (err += b.toString('utf8')))
  let exited = false
  const gone = new Promise<void>((r) =>
    proc.on('exit', () => {
      exited = true
      children.delete(proc)
      r()
    }),
  )
  const t0 = Date.now()
  for (;;) {
    if (exited) throw new Error(`${cmd} ${args.join(' ')} exited before serving:\n${err}`)
    if ('socket' in ready ? await socketLive(ready.socket) : await tcpAccepts(ready.port)) break
    if (Date.now() - t0 > 10_000) {
      proc.kill('SIGKILL')
      throw new Error(`${cmd} did not start in 10 s:\n${err}`)
    }
    await sleep(20)
  }
  return {
    proc,
    stderr: () => err,
    kill: async () => {
      if (!exited) proc.kill('SIGKILL')
      await gone
    },
  }
}

/** nbdkit's file plugin on a new unix socket, with filters and their parameters. */
async function nbdkitFile(file: string, filters: string[] = [], params: string[] = [], extra: string[] = []): Promise<{uri: string; d: Daemon}> {
  const sock = join(mkdtempSync(join(dir, 'kit-')), 's')
  const d = await daemon('nbdkit', ['-f', '--exit-with-parent', '-U', sock, ...extra, ...filters.map((f) => `--filter=${f}`), 'file', file, ...params], {socket: sock})
  return {uri: `nbd+unix:///?socket=${sock}`, d}
}

function isRemote(reason: string, re?: RegExp): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof RemoteError, `expected RemoteError, got ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`)
    assert.equal(e.reason, reason, e.message)
    assert.equal(e.exitCode, 11)
    assert.ok(e.fix, 'a fix is given')
    if (re) assert.match(e.message, re)
    return true
  }
}

/** Random writes and reads, many in flight, checked against a model of the export. */
async function concurrentRoundTrip(c: NbdClient, path: string, seed: number, ops = 300): Promise<void> {
  const rnd = prng(seed)
  const model = await fileBytes(path, 0, c.size)
  const work: Promise<void>[] = []
  // Writes first to distinct 4 KiB blocks (concurrent writes to one block have no defined order), then reads.
  const blocks = new Set<number>()
  while (blocks.size < ops) blocks.add(Math.floor(rnd() * (c.size / 4096)))
  for (const b of blocks) {
    const data = randomBytes(4096)
    data.copy(model, b * 4096)
    work.push(c.write(b * 4096, data))
  }
  await Promise.all(work)
  const reads = [...blocks].map(async (b) => {
    const got = await c.read(b * 4096, 4096)
    assert.ok(got.equals(model.subarray(b * 4096, b * 4096 + 4096)), `block ${b} reads back what was written`)
  })
  await Promise.all(reads)
  await c.flush()
  const disk = await fileBytes(path, 0, c.size)
  assert.ok(disk.equals(model), 'the file holds exactly what the client wrote')
}

// ---------------------------------------------------------------------------------------

/** An export over one file, for clonectl's own server (as in nbdServer.test.ts). */
class FileBackend implements ExportBackend {
  flushes = 0
  closes = 0
  maxReadLength = 0
  private constructor(
    private readonly fh: fsp.FileHandle,
    readonly size: number,
    readonly readOnly: boolean,
  ) {}
  static async open(path: string, size: number): Promise<FileBackend> {
    return new FileBackend(await fsp.open(path, 'r+'), size, false)
  }
  async read(offset: number, length: number): Promise<Buffer> {
    this.maxReadLength = Math.max(this.maxReadLength, length)
    const b = Buffer.alloc(length)
    await this.fh.read(b, 0, length, offset)
    return b
  }
  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    await this.fh.write(data, 0, data.length, offset)
    if (fua) await this.flush()
  }
  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    await this.write(offset, Buffer.alloc(length), fua)
  }
  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.writeZeroes(offset, length, fua)
  }
  async flush(): Promise<void> {
    this.flushes++
    await this.fh.datasync()
  }
  async clientClosed(): Promise<void> {
    this.closes++
  }
  close(): Promise<void> {
    return this.fh.close()
  }
}

describe("against clonectl's own NbdServer (in-process)", () => {
  let path: string
  let backend: FileBackend
  let uri: string

  before(async () => {
    path = await image('own.img')
    backend = await FileBackend.open(path, SIZE)
    const server = new NbdServer(backend, {exportName: 'own', description: 'clonectl test'})
    const sock = join(dir, 'own.sock')
    await server.listenUnix(sock)
    servers.push({close: async () => (await server.close(), await backend.close())})
    uri = `nbd+unix:///own?socket=${sock}`
  })

  test('the handshake reports the size, flags, block sizes and description the server advertises', async () => {
    const c = await NbdClient.connect(uri)
    try {
      assert.equal(c.size, SIZE)
      assert.equal(c.info.negotiatedWith, 'go')
      assert.deepEqual(c.info.blockSizes, {min: 512, preferred: 4096, max: 32 * MiB})
      assert.equal(c.readOnly, false)
      assert.ok(c.canFlush && c.canFua && c.canTrim && c.canWriteZeroes && c.canMultiConn)
    } finally {
      await c.close()
    }
  })

  test('300 concurrent writes then reads of random blocks complete and match the file', async () => {
    const c = await NbdClient.connect(uri)
    try {
      await concurrentRoundTrip(c, path, 1)
    } finally {
      await c.close()
    }
  })

  test('a 40 MiB read and write are split at the 32 MiB maximum and round-trip', async () => {
    const c = await NbdClient.connect(uri)
    try {
      const data = randomBytes(40 * MiB)
      await c.write(8 * MiB, data)
      backend.maxReadLength = 0
      const back = await c.read(8 * MiB, 40 * MiB)
      assert.ok(back.equals(data))
      assert.ok(backend.maxReadLength <= 32 * MiB, `no request above 32 MiB (saw ${backend.maxReadLength})`)
      await c.flush()
      assert.ok((await fileBytes(path, 8 * MiB, 40 * MiB)).equals(data))
    } finally {
      await c.close()
    }
  })

  test('unaligned I/O below the 512-byte minimum is widened (reads) and read-modify-written (writes)', async () => {
    const c = await NbdClient.connect(uri)
    try {
      await c.write(0, Buffer.alloc(2048, 0x11))
      await c.write(100, Buffer.alloc(700, 0x22))
      const expect = Buffer.alloc(2048, 0x11)
      expect.fill(0x22, 100, 800)
      assert.ok((await c.read(0, 2048)).equals(expect))
      assert.ok((await c.read(99, 3)).equals(Buffer.from([0x11, 0x22, 0x22])))
      await c.writeZeroes(300, 1000)
      expect.fill(0, 300, 1300)
      assert.ok((await c.read(0, 2048)).equals(expect))
    } finally {
      await c.close()
    }
  })

  test('flush sends NBD_CMD_FLUSH, and close waits for requests in flight and then disconnects', async () => {
    const c = await NbdClient.connect(uri)
    const flushes = backend.flushes
    await c.flush()
    assert.equal(backend.flushes, flushes + 1)
    const reads = [c.read(0, MiB), c.read(MiB, MiB), c.write(2 * MiB, Buffer.alloc(MiB, 3))]
    const closes = backend.closes
    await c.close()
    await Promise.all(reads)
    for (let i = 0; i < 100 && backend.closes === closes; i++) await sleep(10)
    assert.equal(backend.closes, closes + 1, 'the server saw the client go')
    await assert.rejects(c.read(0, 1), isRemote('closed'))
  })

  test('NbdVolume: kind nbd, path is the URI, read returns exactly length bytes, fingerprint names the URI', async () => {
    const v = await NbdVolume.open(uri, {write: true, timeouts: {connectMs: 2000, requestMs: 5000}})
    try {
      assert.equal(v.kind, 'nbd')
      assert.equal(v.path, uri)
      assert.equal(v.size, SIZE)
      assert.equal(v.readOnly, false)
      assert.equal(v.knownZero, false)
      await v.write(4096, Buffer.alloc(8192, 9))
      const into = Buffer.alloc(16384, 0xff)
      const got = await v.read(4096, 8192, into)
      assert.equal(got.length, 8192)
      assert.ok(got.equals(Buffer.alloc(8192, 9)))
      await v.writeZeroes(4096, 4096)
      assert.ok((await v.read(4096, 4096)).equals(Buffer.alloc(4096)))
      await v.flush()
      assert.deepEqual(await v.fingerprint(), {kind: 'nbd', size: SIZE, uri})
      await assert.rejects(v.read(SIZE - 10, 20), (e: unknown) => e instanceof VolumeIoError && /past the end/.test(e.message))
    } finally {
      await v.close()
    }
  })

  test('NbdVolume opened for reading only refuses writes, though the export is writable', async () => {
    const v = await NbdVolume.open(uri, {write: false})
    try {
      assert.equal(v.readOnly, true)
      await assert.rejects(v.write(0, Buffer.alloc(512)), (e: unknown) => e instanceof VolumeIoError && e.errno === 'EBADF')
    } finally {
      await v.close()
    }
  })

  test('a wrong export name is refused by name', async () => {
    await assert.rejects(NbdClient.connect(uri.replace('/own?', '/nope?')), isRemote('handshake', /no export named "nope"/))
  })
})

// ---------------------------------------------------------------------------------------

describe('against qemu-nbd', () => {
  before(() => needTool(needQemuNbd))
  let path: string
  let uri: string
  let roUri: string

  before(async () => {
    path = await image('qemu.img')
    const sock = join(dir, 'qemu.sock')
    await daemon('qemu-nbd', ['-f', 'raw', '-t', '-k', sock, '-x', 'disk', path], {socket: sock})
    uri = `nbd+unix:///disk?socket=${sock}`
    const roSock = join(dir, 'qemu-ro.sock')
    await daemon('qemu-nbd', ['-f', 'raw', '-t', '-r', '-k', roSock, '-x', 'disk', path], {socket: roSock})
    roUri = `nbd+unix:///disk?socket=${roSock}`
  })

  test('size and a write/read round trip match the file', async () => {
    const c = await NbdClient.connect(uri)
    try {
      assert.equal(c.size, SIZE)
      const data = randomBytes(3 * MiB)
      await c.write(5 * MiB, data)
      await c.flush()
      assert.ok((await c.read(5 * MiB, 3 * MiB)).equals(data))
      assert.ok((await fileBytes(path, 5 * MiB, 3 * MiB)).equals(data))
    } finally {
      await c.close()
    }
  })

  test('300 concurrent requests complete (in any order) and match the file', async () => {
    const c = await NbdClient.connect(uri)
    try {
      await concurrentRoundTrip(c, path, 2)
    } finally {
      await c.close()
    }
  })

  test('a 48 MiB write is split at the server maximum and lands whole', async () => {
    const c = await NbdClient.connect(uri)
    try {
      assert.ok(c.info.blockSizes.max <= 32 * MiB)
      const data = randomBytes(48 * MiB)
      await c.write(4 * MiB, data, {fua: true})
      assert.ok((await fileBytes(path, 4 * MiB, 48 * MiB)).equals(data))
      assert.ok((await c.read(4 * MiB, 48 * MiB)).equals(data))
    } finally {
      await c.close()
    }
  })

  test('WRITE_ZEROES makes the range read as zeros', async () => {
    const c = await NbdClient.connect(uri)
    try {
      await c.write(0, Buffer.alloc(MiB, 0xab))
      await c.writeZeroes(4096, MiB - 8192)
      await c.flush()
      const f = await fileBytes(path, 0, MiB)
      assert.ok(f.subarray(0, 4096).equals(Buffer.alloc(4096, 0xab)))
      assert.ok(f.subarray(4096, MiB - 4096).equals(Buffer.alloc(MiB - 8192)))
      assert.ok(f.subarray(MiB - 4096).equals(Buffer.alloc(4096, 0xab)))
    } finally {
      await c.close()
    }
  })

  test('a read-only export: the client says so and refuses writes with a clear error', async () => {
    const c = await NbdClient.connect(roUri)
    try {
      assert.equal(c.readOnly, true)
      await assert.rejects(c.write(0, Buffer.alloc(512)), isRemote('read-only', /exports it read-only/))
      await c.read(0, 4096)
    } finally {
      await c.close()
    }
    const v = await NbdVolume.open(roUri, {write: true})
    try {
      assert.equal(v.readOnly, true)
      await assert.rejects(v.write(0, Buffer.alloc(512)), (e: unknown) => e instanceof VolumeIoError && e.errno === 'EPERM' && /exported read-only by its NBD server/.test(e.message))
    } finally {
      await v.close()
    }
  })

  test('over TCP loopback (nbd://127.0.0.1:PORT/disk)', async () => {
    const port = await freePort()
    await daemon('qemu-nbd', ['-f', 'raw', '-t', '--bind', '127.0.0.1', '-p', String(port), '-x', 'disk', path], {port})
    const c = await NbdClient.connect(`nbd://127.0.0.1:${port}/disk`)
    try {
      assert.equal(c.size, SIZE)
      await c.write(MiB, Buffer.alloc(4096, 5))
      assert.ok((await c.read(MiB, 4096)).equals(Buffer.alloc(4096, 5)))
    } finally {
      await c.close()
    }
  })
})

// ---------------------------------------------------------------------------------------

describe('TLS', () => {
  before(() => needTool(needQemuNbd || needOpenssl))
  let creds: TlsCreds
  let port: number
  let path: string
  let wrongCaDir: string

  before(async () => {
    creds = makeTlsCreds(dir)
    // The same client certificate, but a CA that did not sign the server's certificate.
    wrongCaDir = mkdtempSync(join(dir, 'wrongca-'))
    copyFileSync(creds.otherCaCert, join(wrongCaDir, 'ca-cert.pem'))
    copyFileSync(creds.clientCert, join(wrongCaDir, 'client-cert.pem'))
    copyFileSync(creds.clientKey, join(wrongCaDir, 'client-key.pem'))
    path = await image('tls.img')
    port = await freePort()
    await daemon('qemu-nbd', ['--object', `tls-creds-x509,id=tls0,dir=${creds.dir},endpoint=server`, '--tls-creds', 'tls0', '-f', 'raw', '-t', '--bind', '127.0.0.1', '-p', String(port), '-x', 'disk', path], {port})
  })

  test('nbds:// with tls-certificates=DIR reaches qemu-nbd over TLS and round-trips data', async () => {
    const v = await NbdVolume.open(`nbds://127.0.0.1:${port}/disk?tls-certificates=${creds.dir}`, {write: true})
    try {
      assert.equal(v.client.info.tls, true)
      const data = randomBytes(2 * MiB)
      await v.write(MiB, data)
      await v.flush()
      assert.ok((await v.read(MiB, 2 * MiB)).equals(data))
      assert.ok((await fileBytes(path, MiB, 2 * MiB)).equals(data))
    } finally {
      await v.close()
    }
  })

  test('TLS options given directly (node:tls ca/cert/key) work with an nbd:// URI', async () => {
    const [ca, cert, key] = await Promise.all([fsp.readFile(creds.caCert), fsp.readFile(creds.clientCert), fsp.readFile(creds.clientKey)])
    const c = await NbdClient.connect(`nbd://127.0.0.1:${port}/disk`, {tls: {ca, cert, key}})
    try {
      assert.equal(c.info.tls, true)
      await c.read(0, 4096)
    } finally {
      await c.close()
    }
  })

  test("a server certificate signed by an unknown CA is refused, naming the CA problem", async () => {
    await assert.rejects(NbdClient.connect(`nbds://127.0.0.1:${port}/disk?tls-certificates=${wrongCaDir}`, {connectTimeoutMs: 5000}), isRemote('tls', /not signed by a trusted CA/))
  })

  test('nbds:// without any TLS credentials is a usage error', async () => {
    await assert.rejects(NbdClient.connect(`nbds://127.0.0.1:${port}/disk`), (e: unknown) => e instanceof UsageError && /names no credentials/.test(e.message) && /tls-certificates/.test(e.fix ?? ''))
  })

  test('a plain client to a TLS-only server is told that TLS is required', async () => {
    await assert.rejects(NbdClient.connect(`nbd://127.0.0.1:${port}/disk`), isRemote('tls', /requires TLS/))
  })

  test('nbdkit --tls=require with X.509 certificates and with a PSK file', async () => {
    needTool(needNbdkit)
    const kpath = await image('tls-kit.img', 8 * MiB)
    const p1 = await freePort()
    await daemon('nbdkit', ['-f', '--exit-with-parent', '--tls=require', `--tls-certificates=${creds.dir}`, '-i', '127.0.0.1', '-p', String(p1), 'file', kpath], {port: p1})
    const p2 = await freePort()
    await daemon('nbdkit', ['-f', '--exit-with-parent', '--tls=require', `--tls-psk=${creds.pskFile}`, '-i', '127.0.0.1', '-p', String(p2), 'file', kpath], {port: p2})
    for (const uri of [`nbds://127.0.0.1:${p1}/?tls-certificates=${creds.dir}`, `nbds://${creds.pskIdentity}@127.0.0.1:${p2}/?tls-psk-file=${creds.pskFile}`]) {
      const c = await NbdClient.connect(uri)
      try {
        assert.equal(c.info.tls, true, uri)
        await c.write(0, Buffer.alloc(4096, 1))
        assert.ok((await c.read(0, 4096)).equals(Buffer.alloc(4096, 1)))
      } finally {
        await c.close()
      }
    }
  })
})

// ---------------------------------------------------------------------------------------

describe('against nbdkit (file plugin and filters)', () => {
  before(() => needTool(needNbdkit))
  test('WRITE_ZEROES keeps the file sparse: nbdkit punches the zeroed range', async () => {
    const path = await image('sparse.img')
    const {uri} = await nbdkitFile(path)
    const c = await NbdClient.connect(uri)
    try {
      assert.ok(c.canWriteZeroes)
      await c.write(0, randomBytes(16 * MiB))
      await c.flush()
      const before = (await fsp.stat(path)).blocks * 512
      assert.ok(before >= 16 * MiB, `data allocated (${before} bytes)`)
      await c.writeZeroes(0, 16 * MiB)
      await c.flush()
      const afterZero = (await fsp.stat(path)).blocks * 512
      assert.ok(afterZero < MiB, `zeroed range deallocated (${afterZero} bytes still allocated)`)
      assert.ok((await c.read(0, 16 * MiB)).equals(Buffer.alloc(16 * MiB)))
    } finally {
      await c.close()
    }
  })

  test('without WRITE_ZEROES (nozero filter) zeros are written as data', async () => {
    const path = await image('nozero.img', 8 * MiB)
    const {uri} = await nbdkitFile(path, ['nozero'])
    const c = await NbdClient.connect(uri)
    try {
      assert.equal(c.canWriteZeroes, false)
      await c.write(0, Buffer.alloc(8 * MiB, 0x5a))
      await c.writeZeroes(4096, 6 * MiB + 100)
      await c.flush()
      const f = await fileBytes(path, 0, 8 * MiB)
      const expect = Buffer.alloc(8 * MiB, 0x5a)
      expect.fill(0, 4096, 4096 + 6 * MiB + 100)
      assert.ok(f.equals(expect))
    } finally {
      await c.close()
    }
  })

  test('block-size policy 4096/64 KiB enforced with errors: the client aligns and splits, never tripping it', async () => {
    const path = await image('policy.img', 8 * MiB)
    const {uri} = await nbdkitFile(path, ['blocksize-policy'], ['blocksize-minimum=4096', 'blocksize-preferred=4096', 'blocksize-maximum=65536', 'blocksize-error-policy=error'])
    const c = await NbdClient.connect(uri)
    try {
      assert.deepEqual(c.info.blockSizes, {min: 4096, preferred: 4096, max: 65536})
      const data = randomBytes(MiB)
      await c.write(MiB, data) // 16 requests of 64 KiB
      assert.ok((await c.read(MiB, MiB)).equals(data))
      // Unaligned: read-modify-write of the enclosing 4 KiB blocks.
      const small = randomBytes(5000)
      await c.write(MiB + 1000, small)
      data.set(small, 1000)
      assert.ok((await c.read(MiB + 999, 5002)).equals(data.subarray(999, 6001)))
      await c.writeZeroes(MiB + 10, 9000)
      data.fill(0, 10, 9010)
      await c.flush()
      assert.ok((await fileBytes(path, MiB, MiB)).equals(data))
    } finally {
      await c.close()
    }
  })

  test('an NBD error reply fails that request with its errno; the connection stays usable', async () => {
    const path = await image('err.img', 8 * MiB)
    const {uri} = await nbdkitFile(path, ['error'], ['error-pwrite=ENOSPC', 'error-pwrite-rate=100%'])
    const c = await NbdClient.connect(uri)
    try {
      await assert.rejects(c.write(0, Buffer.alloc(4096, 1)), (e: unknown) => {
        isRemote('reply', /NBD_CMD_WRITE of 4096 bytes at offset 0: ENOSPC/)(e)
        assert.equal((e as RemoteError).errno, 'ENOSPC')
        return true
      })
      assert.ok((await c.read(0, 4096)).equals(Buffer.alloc(4096)))
    } finally {
      await c.close()
    }
  })

  test('a request unanswered within requestTimeoutMs (delay filter, 5 s reads) fails in about that time, and so do the others', async () => {
    const path = await image('delay.img', 8 * MiB)
    const {uri} = await nbdkitFile(path, ['delay'], ['rdelay=5'])
    const c = await NbdClient.connect(uri, {requestTimeoutMs: 500})
    const t0 = performance.now()
    const reads = [c.read(0, 4096), c.read(4096, 4096), c.read(8192, 4096)]
    const results = await Promise.allSettled(reads)
    const ms = performance.now() - t0
    assert.ok(ms >= 450 && ms < 2500, `failed after ${Math.round(ms)} ms`)
    for (const r of results) {
      assert.equal(r.status, 'rejected')
      isRemote('timeout', /got no answer in 500 ms/)((r as PromiseRejectedResult).reason)
    }
    await assert.rejects(c.read(0, 1), isRemote('timeout'))
    await c.close()
  })

  test('the server killed mid-request: every pending request rejects with RemoteError, no hang', async () => {
    const path = await image('kill.img', 8 * MiB)
    const {uri, d} = await nbdkitFile(path, ['delay'], ['rdelay=3'])
    const v = await NbdVolume.open(uri, {write: true, timeouts: {requestMs: 30_000}})
    const reads = Promise.allSettled(Array.from({length: 8}, (_, i) => v.read(i * 4096, 4096)))
    await sleep(100)
    const t0 = performance.now()
    await d.kill()
    const results = await reads
    assert.ok(performance.now() - t0 < 2000)
    for (const r of results) {
      assert.equal(r.status, 'rejected')
      isRemote('lost', /connection lost/)((r as PromiseRejectedResult).reason)
    }
    await assert.rejects(v.write(0, Buffer.alloc(4096)), isRemote('lost'))
    await v.close() // never rejects on a dead connection
  })
})

// ---------------------------------------------------------------------------------------

/** A TCP server on loopback that runs `onConn` for each connection. */
async function fakeServer(onConn: (s: Socket) => void): Promise<{port: number; server: Server}> {
  const sockets = new Set<Socket>()
  const server = createServer((s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    s.on('error', () => undefined)
    onConn(s)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  servers.push({
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy()
        server.close(() => r())
      }),
  })
  return {port: (server.address() as {port: number}).port, server}
}

/**
 * An old-fashioned server: NBD_OPT_GO is ERR_UNSUP, NBD_OPT_EXPORT_NAME works; READ answers
 * with bytes equal to (offset mod 251). `misbehave`: structured replies, wrong cookies, or
 * (legal) replies held back until 8 requests are in, then sent newest first.
 */
function oldServer(size: number, misbehave?: 'structured' | 'cookie' | 'reverse') {
  return (s: Socket): void => {
    let buf = Buffer.alloc(0)
    let phase: 'flags' | 'opts' | 'tx' = 'flags'
    const held: Buffer[] = []
    s.write(encodeServerGreeting())
    s.on('data', (b: Buffer) => {
      buf = Buffer.concat([buf, b])
      for (;;) {
        if (phase === 'flags') {
          if (buf.length < 4) return
          buf = buf.subarray(4)
          phase = 'opts'
        } else if (phase === 'opts') {
          const h = decodeOptionHeader(buf)
          if (!h || buf.length < 16 + h.length) return
          buf = buf.subarray(16 + h.length) // any export name will do
          if (h.option === Opt.EXPORT_NAME) {
            s.write(encodeExportNameReply(size, TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH, true))
            phase = 'tx'
          } else s.write(encodeOptionReply(h.option, Rep.ERR_UNSUP))
        } else {
          if (buf.length < REQUEST_SIZE) return
          const r = decodeRequest(buf)!
          buf = buf.subarray(REQUEST_SIZE)
          if (r.type === Cmd.DISC) return void s.end()
          const reply = encodeSimpleReply(0, misbehave === 'cookie' ? r.cookie + 1000n : r.cookie)
          if (misbehave === 'structured') reply.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0)
          const d = Buffer.alloc(r.type === Cmd.READ ? r.length : 0)
          for (let i = 0; i < d.length; i++) d[i] = (Number(r.offset) + i) % 251
          if (misbehave === 'reverse') {
            held.push(Buffer.concat([reply, d]))
            if (held.length === 8) s.write(Buffer.concat(held.reverse().splice(0)))
          } else s.write(Buffer.concat([reply, d]))
        }
      }
    })
  }
}

describe('connecting, and servers that misbehave', () => {
  test('a unix socket nobody listens on fails at once with a clear error', async () => {
    const t0 = performance.now()
    await assert.rejects(NbdClient.connect(`nbd+unix:///x?socket=${join(dir, 'nobody.sock')}`), isRemote('connect', /no socket at .*nobody\.sock \(ENOENT\)/))
    assert.ok(performance.now() - t0 < 1000)
  })

  test('a closed TCP port is "connection refused", at once', async () => {
    const port = await freePort()
    const t0 = performance.now()
    await assert.rejects(NbdClient.connect(`nbd://127.0.0.1:${port}/x`), isRemote('connect', /connection refused \(ECONNREFUSED\)/))
    assert.ok(performance.now() - t0 < 1000)
  })

  test('a server that accepts and never speaks: the connect timeout fires after connectTimeoutMs', async () => {
    const {port} = await fakeServer(() => undefined)
    const t0 = performance.now()
    await assert.rejects(NbdClient.connect(`nbd://127.0.0.1:${port}/x`, {connectTimeoutMs: 300}), isRemote('timeout', /no NBD handshake from 127\.0\.0\.1:\d+ within 300 ms/))
    const ms = performance.now() - t0
    assert.ok(ms >= 280 && ms < 1500, `after ${Math.round(ms)} ms`)
  })

  test('an AbortSignal stops connecting at once', async () => {
    const {port} = await fakeServer(() => undefined)
    const ac = new AbortController()
    setTimeout(() => ac.abort(), 50)
    const t0 = performance.now()
    await assert.rejects(NbdClient.connect(`nbd://127.0.0.1:${port}/x`, {signal: ac.signal, connectTimeoutMs: 10_000}), (e: unknown) => e instanceof Error && /interrupted/.test(e.message))
    assert.ok(performance.now() - t0 < 1000)
  })

  test('something that is not an NBD server is named as such', async () => {
    const {port} = await fakeServer((s) => s.end('SSH-2.0-OpenSSH_9.2\r\n'))
    await assert.rejects(NbdClient.connect(`nbd://127.0.0.1:${port}/x`), isRemote('handshake', /not an NBD server/))
  })

  test('a server without NBD_OPT_GO is reached through NBD_OPT_EXPORT_NAME', async () => {
    const {port} = await fakeServer(oldServer(MiB))
    const c = await NbdClient.connect(`nbd://127.0.0.1:${port}/old`)
    try {
      assert.equal(c.info.negotiatedWith, 'export-name')
      assert.equal(c.size, MiB)
      assert.equal(c.info.blockSizesFromServer, false)
      const got = await c.read(1000, 600)
      for (let i = 0; i < 600; i++) assert.equal(got[i], (1000 + i) % 251)
      await c.flush()
    } finally {
      await c.close()
    }
  })

  test('replies in reverse order complete the right requests with the right data', async () => {
    const {port} = await fakeServer(oldServer(MiB, 'reverse'))
    const c = await NbdClient.connect(`nbd://127.0.0.1:${port}/old`)
    try {
      const offsets = [0, 7, 4096, 1000, 65536, 333, 12345, 500000]
      const got = await Promise.all(offsets.map((o, i) => c.read(o, 100 + i * 300)))
      offsets.forEach((o, k) => {
        assert.equal(got[k].length, 100 + k * 300)
        for (let i = 0; i < got[k].length; i++) assert.equal(got[k][i], (o + i) % 251)
      })
    } finally {
      await c.close()
    }
  })

  test('a structured reply that was never negotiated is a protocol error that fails every request', async () => {
    const {port} = await fakeServer(oldServer(MiB, 'structured'))
    const c = await NbdClient.connect(`nbd://127.0.0.1:${port}/old`)
    await assert.rejects(Promise.all([c.read(0, 512), c.read(512, 512)]), isRemote('protocol', /structured reply/))
    await c.close()
  })

  test('a reply with a cookie nobody sent is a protocol error', async () => {
    const {port} = await fakeServer(oldServer(MiB, 'cookie'))
    const c = await NbdClient.connect(`nbd://127.0.0.1:${port}/old`)
    await assert.rejects(c.read(0, 512), isRemote('protocol', /unknown cookie/))
    await c.close()
  })
})
