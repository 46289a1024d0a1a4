/**
 * NbdServer against real NBD clients nobody here wrote (DESIGN §7): nbdinfo, qemu-img,
 * qemu-io, nbdcopy and fio's nbd engine, over a plain file-backed ExportBackend defined
 * below (no clone group), on a unix socket in a temp dir (and once over TCP). A test whose
 * client is not installed fails, naming it (CI installs them all).
 *
 * The server runs in this process, so every client is spawned asynchronously.
 */
import assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {connect} from 'node:net'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {RefusedError} from '../../src/errors/errors.js'
import type {ExportBackend} from '../../src/nbd/ExportBackend.js'
import {NbdServer} from '../../src/nbd/NbdServer.js'
import {
  ClientFlag,
  Cmd,
  EXPORT_NAME_REPLY_SIZE,
  EXPORT_NAME_ZERO_PAD,
  Errno,
  GREETING_SIZE,
  Opt,
  TxFlag,
  decodeExportNameReply,
  encodeClientFlags,
  encodeOption,
} from '../../src/nbd/protocol.js'
import {MiB, NbdTestClient, fioNbd, has, nbdUri, run, runOk, sleep, socketLive, tempDir, needTool} from '../helpers/serve.js'
import {waitFor} from '../helpers/waitFor.js'

/** An export over one file: positional I/O with fs promises, fdatasync on flush. */
class FileBackend implements ExportBackend {
  flushes = 0
  closes = 0
  private constructor(
    private readonly fh: fsp.FileHandle,
    readonly size: number,
    readonly readOnly: boolean,
  ) {}

  static async open(path: string, size: number, readOnly = false): Promise<FileBackend> {
    const fh = await fsp.open(path, readOnly ? 'r' : 'r+')
    return new FileBackend(fh, size, readOnly)
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const b = Buffer.alloc(length)
    let done = 0
    while (done < length) {
      const {bytesRead} = await this.fh.read(b, done, length - done, offset + done)
      if (bytesRead === 0) break // past the file's end: zeros
      done += bytesRead
    }
    return b
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    let done = 0
    while (done < data.length) done += (await this.fh.write(data, done, data.length - done, offset + done)).bytesWritten
    if (fua) await this.flush()
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    const z = Buffer.alloc(Math.min(length, 4 * MiB))
    for (let done = 0; done < length; done += z.length) await this.write(offset + done, z.subarray(0, Math.min(z.length, length - done)), false)
    if (fua) await this.flush()
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
    await this.flush()
  }

  close(): Promise<void> {
    return this.fh.close()
  }
}

const SIZE = 64 * MiB
const needNbdinfo = has('nbdinfo', '--version') ? false : 'nbdinfo (libnbd-bin) is not installed'
const needQemuImg = has('qemu-img', '--version') ? false : 'qemu-img (qemu-utils) is not installed'
const needQemuIo = has('qemu-io', '--version') ? false : 'qemu-io (qemu-utils) is not installed'
const needNbdcopy = has('nbdcopy', '--version') ? false : 'nbdcopy (libnbd-bin) is not installed'
const needFio = has('fio', '--version') ? false : 'fio is not installed'
const needCmp = has('cmp', '--version') ? false : 'cmp (diffutils) is not installed'

let dir: string
let image: string
let backend: FileBackend
let server: NbdServer
let sock: string
let uri: string
const logs: string[] = []

before(async () => {
  dir = await tempDir('nbdserver')
  image = join(dir, 'export.img')
  await fsp.writeFile(image, '')
  await fsp.truncate(image, SIZE)
  backend = await FileBackend.open(image, SIZE)
  server = new NbdServer(backend, {description: 'test export', log: (m) => logs.push(m)})
  sock = join(dir, 'nbd.sock')
  await server.listenUnix(sock)
  uri = nbdUri(sock)
})

after(async () => {
  await server?.close()
  await backend?.close()
  await fsp.rm(dir, {recursive: true, force: true})
})

interface NbdinfoExport {
  'export-name': string
  'export-size': number
  description?: string
  is_read_only: boolean
  can_flush: boolean
  can_fua: boolean
  can_trim: boolean
  can_zero: boolean
  can_multi_conn: boolean
  block_size_minimum: number
  block_size_preferred: number
  block_size_maximum: number
}

async function nbdinfo(u: string, extra: string[] = []): Promise<{protocol: string; exports: NbdinfoExport[]}> {
  const r = await runOk('nbdinfo', ['--json', ...extra, u])
  return JSON.parse(r.stdout) as {protocol: string; exports: NbdinfoExport[]}
}

describe('NbdServer with real clients', () => {
  test('nbdinfo: size and flags (flush, fua, trim, zero, multi-conn; writable), block sizes, description', async () => {
    needTool(needNbdinfo)
    const info = await nbdinfo(uri)
    assert.equal(info.protocol, 'newstyle-fixed')
    const e = info.exports[0]
    assert.equal(e['export-size'], SIZE)
    for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn'] as const) assert.equal(e[k], true, k)
    assert.equal(e.is_read_only, false)
    assert.equal(e.description, 'test export')
    assert.deepEqual([e.block_size_minimum, e.block_size_preferred, e.block_size_maximum], [512, 4096, 32 * MiB])
    // nbdinfo --list goes through NBD_OPT_LIST, then OPT_INFO for each export.
    const l = await nbdinfo(uri, ['--list'])
    assert.deepEqual(
      l.exports.map((x) => x['export-name']),
      [''],
    )
  })

  test('qemu-img info sees a raw image of the right size', async () => {
    needTool(needQemuImg)
    const r = await runOk('qemu-img', ['info', '--output=json', uri])
    const info = JSON.parse(r.stdout) as {'virtual-size': number; format: string}
    assert.equal(info['virtual-size'], SIZE)
    assert.equal(info.format, 'raw')
  })

  test('qemu-io writes a pattern (plain and FUA), reads it back, zeroes, discards, flushes; the file holds it', async () => {
    needTool(needQemuIo)
    const flushesBefore = backend.flushes
    const r = await runOk('qemu-io', [
      '-f', 'raw', uri,
      '-c', 'write -P 0xab 0 1M',
      '-c', 'read -P 0xab 0 1M',
      '-c', 'write -f -P 0xcd 1M 64k', // -f: FUA
      '-c', 'read -P 0xcd 1M 64k',
      '-c', 'write -P 0x11 2M 128k',
      '-c', 'write -z 2M 128k', // WRITE_ZEROES
      '-c', 'read -P 0 2M 128k',
      '-c', 'write -P 0x22 3M 64k',
      '-c', 'discard 3M 64k', // TRIM (this backend zeroes)
      '-c', 'flush',
      '-c', `write -P 0x33 ${SIZE - 4096} 4096`, // the last block
      '-c', `read -P 0x33 ${SIZE - 4096} 4096`,
    ])
    assert.doesNotMatch(r.stdout + r.stderr, /Pattern verification failed|error|failed/i)
    const onDisk = await fsp.readFile(image)
    assert.ok(onDisk.subarray(0, MiB).every((b) => b === 0xab), '0xab at 0')
    assert.ok(onDisk.subarray(MiB, MiB + 65536).every((b) => b === 0xcd), '0xcd at 1M')
    assert.ok(onDisk.subarray(2 * MiB, 2 * MiB + 131072).every((b) => b === 0), 'zeros at 2M')
    assert.ok(onDisk.subarray(3 * MiB, 3 * MiB + 65536).every((b) => b === 0), 'trimmed at 3M')
    assert.ok(onDisk.subarray(SIZE - 4096).every((b) => b === 0x33), '0x33 in the last block')
    assert.ok(backend.flushes >= flushesBefore + 2, 'the FUA write and the flush reached the backend')
  })

  test('nbdcopy 64 MiB into the export and back out: cmp equal; the disconnect flushed', async () => {
    needTool(needNbdcopy || needCmp)
    const input = join(dir, 'in.img')
    const output = join(dir, 'out.img')
    await fsp.writeFile(input, randomBytes(SIZE))
    const closes = backend.closes
    await runOk('nbdcopy', [input, uri]) // several connections: CAN_MULTI_CONN is advertised
    await runOk('cmp', [input, image])
    assert.ok(backend.closes > closes, 'clientClosed ran for the writing connections')
    await runOk('nbdcopy', [uri, output])
    await runOk('cmp', [input, output])
    await fsp.rm(input)
    await fsp.rm(output)
  })

  test('fio randrw 4k QD16 with crc32c verify: no verify errors', async () => {
    needTool(needFio)
    const r = await fioNbd(uri, ['--rw=randrw', '--bs=4k', '--iodepth=16', `--size=${SIZE}`, '--verify=crc32c', '--do_verify=1', '--verify_fatal=1'])
    assert.equal(r.errors, 0, r.stderr)
    assert.ok(r.iops.read > 0 && r.iops.write > 0)
  })

  test('on the wire: a read past the end is EINVAL, writes past it ENOSPC; the connection keeps working', async () => {
    const c = await NbdTestClient.connect(sock)
    try {
      assert.equal(c.size, SIZE)
      assert.equal((await c.request(Cmd.READ, SIZE - 512, 1024)).error, Errno.EINVAL)
      assert.equal((await c.request(Cmd.READ, SIZE, 512)).error, Errno.EINVAL)
      assert.equal((await c.request(Cmd.READ, 1n << 62n, 512)).error, Errno.EINVAL)
      assert.equal((await c.request(Cmd.READ, 0, 32 * MiB + 1)).error, Errno.EINVAL)
      assert.equal((await c.request(Cmd.WRITE, SIZE, 512, {payload: Buffer.alloc(512)})).error, Errno.ENOSPC)
      assert.equal((await c.request(Cmd.WRITE, 0, 32 * MiB + 512, {payload: Buffer.alloc(32 * MiB + 512)})).error, Errno.EINVAL)
      assert.equal((await c.request(Cmd.WRITE_ZEROES, SIZE - 512, 4096)).error, Errno.ENOSPC)
      assert.equal((await c.request(Cmd.TRIM, SIZE - 512, 4096)).error, Errno.ENOSPC)
      assert.equal((await c.request(99, 0, 0)).error, Errno.EINVAL)
      const data = randomBytes(4096)
      await c.write(SIZE - 4096, data, true)
      assert.deepEqual(await c.read(SIZE - 4096, 4096), data)
      // A 32 MiB read and write, the largest allowed.
      const big = randomBytes(32 * MiB)
      await c.write(0, big)
      assert.ok((await c.read(0, 32 * MiB)).equals(big))
      await c.flush()
      assert.deepEqual(c.protocolErrors, [])
    } finally {
      await c.disconnect()
    }
  })

  test('qemu-io: a read past the end fails, the next read works', async () => {
    needTool(needQemuIo)
    // qemu-io checks the range itself (the wire part is the test above); the connection and
    // the server go on serving.
    const r = await run('qemu-io', ['-f', 'raw', uri, '-c', `read ${SIZE} 512`, '-c', 'read 0 512'])
    assert.match(r.stdout + r.stderr, /read 512\/512 bytes at offset 0/)
  })

  test('NBD_OPT_EXPORT_NAME (old-style entry): size, flags, 124 zeros unless NO_ZEROES', async () => {
    for (const noZeroes of [true, false]) {
      const s = connect(sock)
      const got: Buffer[] = []
      s.on('data', (b: Buffer) => got.push(b))
      await new Promise<void>((r) => s.once('connect', () => r()))
      s.write(encodeClientFlags(ClientFlag.FIXED_NEWSTYLE | (noZeroes ? ClientFlag.NO_ZEROES : 0)))
      s.write(encodeOption(Opt.EXPORT_NAME, Buffer.from('')))
      const want = GREETING_SIZE + EXPORT_NAME_REPLY_SIZE + (noZeroes ? 0 : EXPORT_NAME_ZERO_PAD)
      for (let i = 0; i < 200 && Buffer.concat(got).length < want; i++) await sleep(5)
      await sleep(20)
      const all = Buffer.concat(got)
      assert.equal(all.length, want)
      const reply = decodeExportNameReply(all.subarray(GREETING_SIZE))
      assert.equal(reply?.size, BigInt(SIZE))
      assert.ok(reply && reply.flags & TxFlag.HAS_FLAGS && reply.flags & TxFlag.SEND_FLUSH && !(reply.flags & TxFlag.READ_ONLY))
      assert.ok(all.subarray(GREETING_SIZE + EXPORT_NAME_REPLY_SIZE).every((b) => b === 0))
      s.destroy()
    }
  })
})

describe('NbdServer: a named export over TCP', () => {
  let tcp: NbdServer
  let port: number
  before(async () => {
    tcp = new NbdServer(backend, {exportName: 'disk', multiConn: false})
    port = await tcp.listenTcp('127.0.0.1', 0)
  })
  after(async () => {
    await tcp?.close()
  })

  test('nbdinfo reaches it by name; --list shows the name; multi-conn off', async () => {
    needTool(needNbdinfo)
    assert.ok(port > 0)
    const e = (await nbdinfo(`nbd://127.0.0.1:${port}/disk`)).exports[0]
    assert.equal(e['export-size'], SIZE)
    assert.equal(e.can_multi_conn, false)
    const l = await nbdinfo(`nbd://127.0.0.1:${port}/`, ['--list'])
    assert.deepEqual(
      l.exports.map((x) => x['export-name']),
      ['disk'],
    )
  })

  test('an unknown export name is refused (NBD_REP_ERR_UNKNOWN)', async () => {
    needTool(needNbdinfo)
    const r = await run('nbdinfo', [`nbd://127.0.0.1:${port}/nope`])
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /No such file or directory for export: nope/) // libnbd's words for ERR_UNKNOWN
  })
})

describe('NbdServer: backend errors reach the client as NBD errors', () => {
  /** Fails writes at and after 1 MiB with ENOSPC (carried in .errno), reads at 2 MiB with EIO. */
  class Failing implements ExportBackend {
    readonly size = 4 * MiB
    readonly readOnly = false
    async read(offset: number, length: number): Promise<Buffer> {
      if (offset >= 2 * MiB) throw Object.assign(new Error('disk on fire'), {code: 'EIO'})
      return Buffer.alloc(length)
    }
    async write(offset: number): Promise<void> {
      if (offset >= MiB) throw Object.assign(new Error('thin pool full'), {errno: 'ENOSPC'})
    }
    async writeZeroes(): Promise<void> {}
    async trim(): Promise<void> {}
    async flush(): Promise<void> {}
  }
  let srv: NbdServer
  let s2: string
  const log: string[] = []
  before(async () => {
    srv = new NbdServer(new Failing(), {log: (m) => log.push(m)})
    s2 = join(dir, 'failing.sock')
    await srv.listenUnix(s2)
  })
  after(async () => {
    await srv?.close()
  })

  test('qemu-io sees ENOSPC and EIO; the next request on the same connection works; the server logged both', async () => {
    needTool(needQemuIo)
    const r = await run('qemu-io', ['-f', 'raw', nbdUri(s2), '-c', 'write -P 1 1M 4k', '-c', 'read 2M 4k', '-c', 'write -P 1 0 4k', '-c', 'read 0 4k'])
    const out = r.stdout + r.stderr
    assert.match(out, /No space left on device/)
    assert.match(out, /Input\/output error/)
    assert.match(out, /wrote 4096\/4096 bytes at offset 0/)
    assert.match(out, /read 4096\/4096 bytes at offset 0/)
    assert.ok(log.some((m) => /ENOSPC: thin pool full/.test(m)))
    assert.ok(log.some((m) => /EIO: disk on fire/.test(m)))
  })
})

describe('NbdServer, read-only export', () => {
  let roBackend: FileBackend
  let roServer: NbdServer
  let roSock: string
  before(async () => {
    roBackend = await FileBackend.open(image, SIZE, true)
    roServer = new NbdServer(roBackend)
    roSock = join(dir, 'ro.sock')
    await roServer.listenUnix(roSock)
  })
  after(async () => {
    await roServer?.close()
    await roBackend?.close()
  })

  test('nbdinfo says is_read_only', async () => {
    needTool(needNbdinfo)
    const e = (await nbdinfo(nbdUri(roSock))).exports[0]
    assert.equal(e.is_read_only, true)
    assert.equal(e['export-size'], SIZE)
  })

  test('writes, zeroes and trims on the wire get EPERM and change nothing; reads and flush work', async () => {
    const before = await fsp.readFile(image)
    const c = await NbdTestClient.connect(roSock)
    try {
      assert.equal((await c.request(Cmd.WRITE, 0, 512, {payload: Buffer.alloc(512, 7)})).error, Errno.EPERM)
      assert.equal((await c.request(Cmd.WRITE, 0, 512, {payload: Buffer.alloc(512, 7), flags: 1})).error, Errno.EPERM)
      assert.equal((await c.request(Cmd.WRITE_ZEROES, 0, 512)).error, Errno.EPERM)
      assert.equal((await c.request(Cmd.TRIM, 0, 512)).error, Errno.EPERM)
      assert.deepEqual(await c.read(0, 512), before.subarray(0, 512))
      assert.equal((await c.request(Cmd.FLUSH, 0, 0)).error, 0)
      assert.deepEqual(c.protocolErrors, [])
    } finally {
      await c.disconnect()
    }
    assert.ok((await fsp.readFile(image)).equals(before), 'the file is unchanged')
  })

  test('qemu-io on a read-only export: a write fails, the data is unchanged', async () => {
    needTool(needQemuIo)
    const before = await fsp.readFile(image)
    const r = await run('qemu-io', ['-f', 'raw', '-r', nbdUri(roSock), '-c', 'read 0 4k'])
    assert.equal(r.code, 0, r.stderr)
    for (const args of [['-f', 'raw', nbdUri(roSock)], ['-f', 'raw', '-r', nbdUri(roSock)]]) {
      const w = await run('qemu-io', [...args, '-c', 'write -P 0x77 0 4k'])
      assert.notEqual(w.code, 0)
      assert.match(w.stdout + w.stderr, /read-only|Operation not permitted|Permission denied/i)
    }
    assert.ok((await fsp.readFile(image)).equals(before), 'the file is unchanged')
  })
})

describe('NbdServer: listening and closing', () => {
  const quiet = {
    size: MiB,
    readOnly: false,
    read: async (_o: number, l: number) => Buffer.alloc(l),
    write: async () => undefined,
    writeZeroes: async () => undefined,
    trim: async () => undefined,
    flush: async () => undefined,
  } satisfies ExportBackend

  test('the unix socket is mode 0600', async () => {
    const st = await fsp.stat(sock)
    assert.ok(st.isSocket())
    assert.equal(st.mode & 0o777, 0o600)
  })

  test('a live socket is refused, a stale one replaced, a non-socket path refused and kept', async () => {
    await assert.rejects(new NbdServer(quiet).listenUnix(sock), (e: unknown) => e instanceof RefusedError && /another server is listening/.test(e.message))
    assert.ok(await socketLive(sock), 'the first server still serves')

    // A stale socket: its process died without removing it.
    const stale = join(dir, 'stale.sock')
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`])
    await new Promise((r) => child.on('exit', r))
    assert.ok((await fsp.stat(stale)).isSocket())
    assert.equal(await socketLive(stale), false)
    const s = new NbdServer(quiet)
    await s.listenUnix(stale)
    assert.ok(await socketLive(stale))
    await s.close()

    const plain = join(dir, 'not-a-socket')
    await fsp.writeFile(plain, 'keep me')
    await assert.rejects(new NbdServer(quiet).listenUnix(plain), RefusedError)
    assert.equal(await fsp.readFile(plain, 'utf8'), 'keep me')
  })

  test('close() answers requests in flight, runs clientClosed, removes the socket, and is idempotent', async () => {
    let release!: () => void
    const gate = new Promise<void>((r) => (release = r))
    const events: string[] = []
    const slow: ExportBackend = {
      ...quiet,
      write: async () => {
        events.push('write started')
        await gate
        events.push('write done')
      },
      clientClosed: async () => {
        events.push('clientClosed')
      },
    }
    const s = new NbdServer(slow)
    const path = join(dir, 'closing.sock')
    await s.listenUnix(path)
    const c = await NbdTestClient.connect(path)
    const idle = await NbdTestClient.connect(path) // another client, nothing in flight
    const w = c.request(Cmd.WRITE, 0, 4096, {payload: Buffer.alloc(4096)})
    await waitFor(() => events.includes('write started'), 'the backend to start the write')
    assert.equal(s.connections, 2)
    let closed = false
    const closing = s.close().then(() => (closed = true))
    await sleep(50)
    assert.equal(closed, false, 'close() waits for the write in flight')
    release()
    assert.equal((await w).error, 0, 'the write in flight is answered')
    await closing
    // The idle connection closes at once; the busy one only after its write is done.
    assert.deepEqual(events, ['write started', 'clientClosed', 'write done', 'clientClosed'])
    assert.equal(s.connections, 0)
    assert.equal(await socketLive(path), false)
    await assert.rejects(fsp.stat(path), /ENOENT/)
    await s.close()
    c.destroy()
    idle.destroy()
  })
})
