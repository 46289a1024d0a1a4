/**
 * Volumes: FileVolume's data path and its refusals, sparse images, what identifies a volume
 * (hard links, symlinks, loop devices, partitions) and the checks made before a clone joins
 * a group. Real files in a temp directory, plus the in-memory MemoryFs where a crash or an
 * injected errno is needed. Block devices: test/integration/blockVolume.test.ts.
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {NotFoundError, RefusedError, RemoteError, UsageError, VolumeIoError} from '../../src/errors/errors.js'
import type {DurableFile, DurableFs} from '../../src/io/DurableFs.js'
import {MemoryFs} from '../support/MemoryFs.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {BlockVolume} from '../../src/volume/BlockVolume.js'
import {majorMinor} from '../../src/volume/blockDevice.js'
import {alignedBuffer} from '../../src/volume/alignedBuffer.js'
import {FileVolume} from '../../src/volume/FileVolume.js'
import {kernel} from '../../src/volume/kernel.js'
import {checkCloneCandidate, checkCloneSize, resolveIdentity, sameVolume, type VolumeIdentity} from '../../src/volume/identity.js'
import {openVolume} from '../../src/volume/openVolume.js'

const MiB = 1024 * 1024
let dir: string

before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'clonectl-volume-'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

let n = 0
/** A new image holding `data`, written through O_DIRECT (a fresh image's writes): none of it in the page cache. */
async function directlyWritten(data: Uint8Array): Promise<string> {
  const p = join(dir, `direct-${n++}.img`)
  await FileVolume.createSparse(nodeFs, p, data.byteLength)
  const w = await FileVolume.open(nodeFs, p, {write: true})
  w.knownZero = true
  const buf = alignedBuffer(data.byteLength)
  buf.set(data)
  await w.write(0, buf)
  await w.flush()
  assert.equal(w.directWrites, 1, 'written through O_DIRECT')
  await w.close()
  return p
}

/** A new file in the temp directory holding `data`. */
async function fileWith(data: Uint8Array): Promise<string> {
  const p = join(dir, `v${n++}.img`)
  await fsp.writeFile(p, data)
  return p
}

/** Assert that `p` rejects with an instance of `cls` whose message matches every pattern. */
async function rejectsWith(p: Promise<unknown>, cls: new (...a: never[]) => Error, ...patterns: Array<string | RegExp>): Promise<Error> {
  let caught: unknown
  await p.then(
    () => assert.fail(`expected ${cls.name}, but it resolved`),
    (error: unknown) => {
      caught = error
    },
  )
  assert.ok(caught instanceof cls, `expected ${cls.name}, got ${String(caught)}`)
  for (const pat of patterns) {
    if (typeof pat === 'string') assert.ok(caught.message.includes(pat), `message ${JSON.stringify(caught.message)} should name ${pat}`)
    else assert.match(caught.message, pat)
  }
  return caught
}

describe('FileVolume: reads, writes, zeros, flush and fingerprint', () => {
  test('given a file with random bytes; when it is opened, then size and every byte read match the file', async () => {
    const data = randomBytes(MiB + 123)
    const p = await fileWith(data)
    const v = await FileVolume.open(nodeFs, p, {write: false})
    try {
      assert.equal(v.kind, 'file')
      assert.equal(v.size, data.length)
      assert.equal(v.readOnly, true)
      assert.equal(v.knownZero, false, 'knownZero defaults to false')
      assert.deepEqual(await v.read(0, data.length), data)
      assert.deepEqual(await v.read(4000, 300), data.subarray(4000, 4300))
      const into = Buffer.alloc(1000, 0xaa)
      const got = await v.read(10, 500, into)
      assert.equal(got.buffer, into.buffer, 'reads into the caller\'s buffer when it is big enough')
      assert.deepEqual(got, data.subarray(10, 510))
      assert.equal((await v.read(data.length, 0)).length, 0, 'an empty read at the end is fine')
    } finally {
      await v.close()
    }
  })

  test('when bytes are written and flushed, then the file holds them and nothing else changed', async () => {
    const data = randomBytes(256 * 1024)
    const p = await fileWith(data)
    const v = await FileVolume.open(nodeFs, p, {write: true})
    const patch = randomBytes(5000)
    try {
      await v.write(70_000, patch)
      assert.deepEqual(await v.read(70_000, 5000), patch, 'read after write sees the write')
      await v.flush()
    } finally {
      await v.close()
    }
    const want = Buffer.from(data)
    patch.copy(want, 70_000)
    assert.deepEqual(await fsp.readFile(p), want)
  })

  test('when writeZeroes covers more than one 1 MiB chunk, then exactly that range reads as zeros', async () => {
    const data = Buffer.alloc(3 * MiB + 777, 0x5a)
    const p = await fileWith(data)
    const v = await FileVolume.open(nodeFs, p, {write: true})
    const from = 100
    const len = 2 * MiB + 4321
    try {
      await v.writeZeroes(from, len)
      await v.writeZeroes(0, 0)
      await v.flush()
    } finally {
      await v.close()
    }
    const got = await fsp.readFile(p)
    assert.equal(got.length, data.length, 'size unchanged')
    assert.ok(got.subarray(0, from).every((b) => b === 0x5a), 'before the range untouched')
    assert.ok(got.subarray(from, from + len).every((b) => b === 0), 'the range is zero')
    assert.ok(got.subarray(from + len).every((b) => b === 0x5a), 'after the range untouched')
  })

  test('then the fingerprint is the file\'s dev, inode, size, mtime and ctime, and a write behind the volume\'s back changes it', async () => {
    const p = await fileWith(Buffer.alloc(8192, 1))
    const v = await FileVolume.open(nodeFs, p, {write: false})
    try {
      const s = await fsp.stat(p)
      const fp = await v.fingerprint()
      assert.deepEqual(fp, {kind: 'file', size: 8192, dev: s.dev, ino: s.ino, mtimeMs: s.mtimeMs, ctimeMs: s.ctimeMs})
      const later = new Date(s.mtimeMs + 5000)
      await fsp.utimes(p, later, later)
      const fp2 = await v.fingerprint()
      assert.notEqual(fp2.mtimeMs, fp.mtimeMs)
      assert.equal(fp2.ino, fp.ino)
    } finally {
      await v.close()
    }
  })
})

describe('NodeDurableFs: small page-aligned writes skip the thread pool', () => {
  /** Whether `p` settles while only microtasks run (no event-loop turn, so no thread-pool completion). */
  async function settlesWithoutLoop(p: Promise<unknown>): Promise<boolean> {
    let settled = false
    p.then(
      () => (settled = true),
      () => (settled = true),
    )
    for (let i = 0; i < 20 && !settled; i++) await Promise.resolve()
    const early = settled
    await p.catch(() => undefined)
    return early
  }

  test('given a buffered file; when 4 KiB and 64 KiB aligned writes are made, then each is done before the event loop turns, and the file holds them', async () => {
    const p = await fileWith(Buffer.alloc(256 * 1024))
    const f = await nodeFs.open(p, {write: true})
    const a = randomBytes(4096)
    const b = randomBytes(64 * 1024)
    try {
      assert.equal(await settlesWithoutLoop(f.write(a, 8192)), true, '4 KiB at 8192')
      assert.equal(await settlesWithoutLoop(f.write(b, 65536)), true, '64 KiB at 65536')
    } finally {
      await f.close()
    }
    const got = await fsp.readFile(p)
    assert.deepEqual(got.subarray(8192, 8192 + 4096), a)
    assert.deepEqual(got.subarray(65536, 65536 + b.length), b)
    assert.equal(got.subarray(0, 8192).every((x) => x === 0), true, 'nothing else changed')
  })

  test('given an unaligned or a larger write; then it still goes through the pool and lands whole', async () => {
    const p = await fileWith(Buffer.alloc(256 * 1024))
    const f = await nodeFs.open(p, {write: true})
    const a = randomBytes(5000)
    const b = randomBytes(128 * 1024)
    try {
      assert.equal(await settlesWithoutLoop(f.write(a, 100)), false, 'unaligned: may need a read of the page, never on the event loop')
      assert.equal(await settlesWithoutLoop(f.write(b, 128 * 1024)), false, 'larger than 64 KiB')
    } finally {
      await f.close()
    }
    const got = await fsp.readFile(p)
    assert.deepEqual(got.subarray(100, 5100), a)
    assert.deepEqual(got.subarray(128 * 1024), b)
  })

  test('FileVolume.writeNow: an aligned 4 KiB write is done at once; unaligned, or possibly O_DIRECT, it declines; past the end or read-only, VolumeIoError', async () => {
    const p = await fileWith(Buffer.alloc(256 * 1024))
    const v = await FileVolume.open(nodeFs, p, {write: true})
    const a = randomBytes(4096)
    try {
      assert.equal(v.writeNow(12288, a), true)
      assert.deepEqual(await v.read(12288, 4096), a, 'read after write sees it')
      assert.equal(v.writeNow(100, randomBytes(4096)), false, 'unaligned')
      v.knownZero = true
      assert.equal(v.writeNow(0, alignedBuffer(64 * 1024)), false, 'a fresh image may take it through O_DIRECT')
      assert.throws(() => v.writeNow(256 * 1024, a), (e: Error) => e instanceof VolumeIoError && e.message.includes('past the end'))
    } finally {
      await v.close()
    }
    const ro = await FileVolume.open(nodeFs, p, {write: false})
    try {
      assert.throws(() => ro.writeNow(0, a), VolumeIoError)
    } finally {
      await ro.close()
    }
    assert.deepEqual((await fsp.readFile(p)).subarray(12288, 12288 + 4096), a)
  })

  test('given a device that is full (/dev/full); when a small aligned write fails, then it rejects with its errno (never throws)', async () => {
    const f = await nodeFs.open('/dev/full', {write: true})
    try {
      let p: Promise<void> | undefined
      assert.doesNotThrow(() => {
        p = f.write(Buffer.alloc(4096), 0)
      })
      await assert.rejects(p!, (e: NodeJS.ErrnoException) => e.code === 'ENOSPC')
    } finally {
      await f.close()
    }
  })
})

describe('FileVolume: refusals and errors', () => {
  test('given a 4096-byte volume; when I/O reaches past its end, then VolumeIoError names the path, offset and size, and the file does not grow', async () => {
    const p = await fileWith(Buffer.alloc(4096, 7))
    const v = await FileVolume.open(nodeFs, p, {write: true})
    try {
      await rejectsWith(v.read(4000, 200), VolumeIoError, p, '4000', '4096 bytes')
      await rejectsWith(v.write(4096, Buffer.alloc(1)), VolumeIoError, p, 'offset 4096', '4096 bytes')
      await rejectsWith(v.writeZeroes(1, 4096), VolumeIoError, p, 'offset 1', '4096 bytes')
      await rejectsWith(v.read(-1, 10), VolumeIoError, p, 'offset -1')
      const e = await rejectsWith(v.write(4095, Buffer.alloc(2)), VolumeIoError, p)
      assert.equal((e as VolumeIoError).errno, 'EINVAL')
      assert.equal((e as VolumeIoError).exitCode, 8)
    } finally {
      await v.close()
    }
    assert.equal((await fsp.stat(p)).size, 4096)
    assert.ok((await fsp.readFile(p)).every((b) => b === 7))
  })

  test('given a volume opened read-only; when it is written, then VolumeIoError says so', async () => {
    const p = await fileWith(Buffer.alloc(4096))
    const v = await FileVolume.open(nodeFs, p, {write: false})
    try {
      await rejectsWith(v.write(0, Buffer.alloc(1)), VolumeIoError, p, 'read-only')
      await rejectsWith(v.writeZeroes(0, 1), VolumeIoError, p, 'read-only')
    } finally {
      await v.close()
    }
  })

  test('given a file truncated behind the volume\'s back; when the lost range is read, then VolumeIoError (never zeros)', async () => {
    const p = await fileWith(Buffer.alloc(8192, 3))
    const v = await FileVolume.open(nodeFs, p, {write: false})
    try {
      await fsp.truncate(p, 4096)
      await rejectsWith(v.read(0, 8192), VolumeIoError, p, 'offset 4096', 'truncated')
    } finally {
      await v.close()
    }
  })

  test('given a file system out of space; when a write fails with ENOSPC, then the message is "no space left on device writing PATH at offset N"', async () => {
    const mem = new MemoryFs()
    mem.seedFile('/vol/a.img', Buffer.alloc(8192))
    const enospc = (): Error => Object.assign(new Error('ENOSPC: no space left on device, write'), {code: 'ENOSPC'})
    // MemoryFs, except that every data write fails with ENOSPC.
    const full: DurableFs = {
      rename: (a, b) => mem.rename(a, b),
      fsyncDir: (d) => mem.fsyncDir(d),
      unlink: (x) => mem.unlink(x),
      mkdirp: (d) => mem.mkdirp(d),
      readdir: (d) => mem.readdir(d),
      exists: (x) => mem.exists(x),
      stat: (x) => mem.stat(x),
      readFile: (x) => mem.readFile(x),
      realpath: (x) => mem.realpath(x),
      async open(path, o): Promise<DurableFile> {
        const f = await mem.open(path, o)
        return {
          path: f.path,
          read: (b: Uint8Array, pos: number, len?: number) => f.read(b, pos, len),
          write: async () => {
            throw enospc()
          },
          datasync: () => f.datasync(),
          size: () => f.size(),
          truncate: (l: number) => f.truncate(l),
          close: () => f.close(),
        }
      },
    }
    const v = await FileVolume.open(full, '/vol/a.img', {write: true})
    try {
      const e = await rejectsWith(v.write(4096, Buffer.alloc(10)), VolumeIoError)
      assert.equal(e.message, 'no space left on device writing /vol/a.img at offset 4096')
      assert.equal((e as VolumeIoError).errno, 'ENOSPC')
      assert.ok((e as VolumeIoError).fix?.includes('free space'))
      const z = await rejectsWith(v.writeZeroes(1024, 100), VolumeIoError, '/vol/a.img', 'offset 1024')
      assert.equal((z as VolumeIoError).errno, 'ENOSPC')
    } finally {
      await v.close()
    }
  })

  test('given a missing path or a directory; when opened as a file volume, then NotFoundError / UsageError naming it', async () => {
    await rejectsWith(FileVolume.open(nodeFs, join(dir, 'missing.img'), {write: false}), NotFoundError, 'missing.img')
    await rejectsWith(FileVolume.open(nodeFs, dir, {write: false}), UsageError, dir)
  })
})

describe('FileVolume.createSparse', () => {
  test('when a 256 MiB sparse image is created, then it has that size and (nearly) nothing allocated, and opens with knownZero settable', async () => {
    const p = join(dir, 'sparse.img')
    await FileVolume.createSparse(nodeFs, p, 256 * MiB)
    const s = await fsp.stat(p)
    assert.equal(s.size, 256 * MiB)
    assert.ok(s.blocks * 512 <= 64 * 1024, `allocated ${s.blocks * 512} bytes, expected ~0`)
    const v = await FileVolume.open(nodeFs, p, {write: true})
    try {
      assert.equal(v.size, 256 * MiB)
      v.knownZero = true
      assert.equal(v.knownZero, true)
      assert.ok((await v.read(100 * MiB, 4096)).every((b) => b === 0))
    } finally {
      await v.close()
    }
  })

  test('given a dense and a mostly sparse image; then bulk reads of ranges not wholly in the page cache bypass it (readsDirect), wholly cached ones read from it, and every read sees every byte, unflushed writes of another handle included', async () => {
    const p = join(dir, 'mostly-holes.img')
    await FileVolume.createSparse(nodeFs, p, 8 * MiB)
    const data = randomBytes(256 * 1024)
    const fh = await fsp.open(p, 'r+')
    await fh.write(data, 0, data.length, 3 * MiB)
    await fh.close()
    const denseData = randomBytes(1 * MiB)
    const dense = await FileVolume.open(nodeFs, await fileWith(denseData), {write: false})
    const ro = await FileVolume.open(nodeFs, p, {write: false})
    const rw = await FileVolume.open(nodeFs, p, {write: true})
    // cachestat(2) (Linux 6.5+) says what is cached; without it every aligned bulk read is direct.
    const probe = await fsp.open(p, 'r')
    const cachestat = kernel()?.pagesCached(probe.fd, 0, 4096) !== undefined
    await probe.close()
    try {
      assert.equal(dense.readsDirect, true, 'a dense file reads direct')
      assert.equal(ro.readsDirect, true, 'a file with 1/32 allocated reads direct')
      // Just written, so in the page cache: read from there, not from the device again.
      assert.ok((await dense.read(256 * 1024, 512 * 1024, alignedBuffer(512 * 1024))).equals(denseData.subarray(256 * 1024, 768 * 1024)))
      const buf = alignedBuffer(2 * MiB)
      const whole = Buffer.alloc(8 * MiB)
      for (let off = 0; off < 8 * MiB; off += 2 * MiB) (await ro.read(off, 2 * MiB, buf)).copy(whole, off)
      const want = Buffer.alloc(8 * MiB)
      data.copy(want, 3 * MiB)
      assert.ok(whole.equals(want), 'holes read as zeros and data as written')
      // A buffered write through another handle, not flushed, inside a range not otherwise
      // cached: the direct read sees it (the kernel writes the dirty page back first).
      const late = randomBytes(4096)
      await rw.write(5 * MiB + 64 * 1024, late)
      const got = await ro.read(5 * MiB, 128 * 1024, buf.subarray(0, 128 * 1024))
      assert.ok(got.subarray(64 * 1024, 68 * 1024).equals(late) && got.subarray(0, 64 * 1024).every((b) => b === 0))
      // Unaligned ranges and plain buffers take the ordinary path.
      assert.ok((await ro.read(3 * MiB + 1, 1000)).equals(data.subarray(1, 1001)))
      assert.ok((await ro.read(3 * MiB, 64 * 1024, Buffer.alloc(64 * 1024))).equals(data.subarray(0, 64 * 1024)))
      // What was done, not what was meant: readsDirect is the intent, these count O_DIRECT reads.
      assert.equal(dense.directReads, cachestat ? 0 : 1, cachestat ? 'the cached dense range was read from the page cache' : 'the dense read went through O_DIRECT')
      assert.equal(ro.directReads, 5, 'the four 2 MiB reads and the 128 KiB one (holes, not cached) went through O_DIRECT; the unaligned and plain-buffer ones did not')
      assert.equal(ro.readsDirect, true)
      if (cachestat) {
        // A buffered read brings a hole's pages into the cache: the same range is then read from it.
        await ro.read(6 * MiB, 64 * 1024, Buffer.alloc(64 * 1024))
        await ro.read(6 * MiB, 64 * 1024, alignedBuffer(64 * 1024))
        assert.equal(ro.directReads, 5, 'a range a buffered read has brought into the cache is read from it')
      }
    } finally {
      await Promise.all([dense.close(), ro.close(), rw.close()])
    }
  })

  test('given an image written through O_DIRECT (not in the page cache); then an aligned bulk read of it goes through O_DIRECT too, and sees the data', async () => {
    const data = randomBytes(MiB)
    const r = await FileVolume.open(nodeFs, await directlyWritten(data), {write: false})
    try {
      assert.ok((await r.read(0, MiB, alignedBuffer(MiB))).equals(data))
      assert.equal(r.directReads, 1)
    } finally {
      await r.close()
    }
  })

  test('given a file system whose O_DIRECT open fails; then bulk reads are buffered, still see every byte, and say so (readsDirect false, no direct reads)', async () => {
    const data = randomBytes(1 * MiB)
    const p = await directlyWritten(data)
    let tried = 0
    const noDirect: DurableFs = Object.assign(Object.create(nodeFs) as DurableFs, {
      openDirect: async (): Promise<DurableFile> => {
        tried++
        throw Object.assign(new Error('EINVAL: invalid argument, open'), {code: 'EINVAL'})
      },
    })
    const v = await FileVolume.open(noDirect, p, {write: false})
    try {
      assert.ok((await v.read(0, MiB, alignedBuffer(MiB))).equals(data))
      assert.equal(tried, 1, 'the O_DIRECT open was tried')
      assert.equal(v.directReads, 0)
      assert.equal(v.readsDirect, false, 'and the volume no longer claims to read direct')
      assert.ok((await v.read(MiB / 2, 256 * 1024, alignedBuffer(256 * 1024))).equals(data.subarray(MiB / 2, MiB / 2 + 256 * 1024)))
      assert.equal(tried, 1, 'not retried for every read')
    } finally {
      await v.close()
    }
  })

  test('given an existing path; when createSparse is asked for it, then RefusedError naming the path and the file is untouched', async () => {
    const p = await fileWith(Buffer.from('precious'))
    await rejectsWith(FileVolume.createSparse(nodeFs, p, MiB), RefusedError, p, 'already exists')
    assert.equal((await fsp.readFile(p)).toString(), 'precious')
  })

  test('given a missing directory; when createSparse is asked for a path in it, then NotFoundError naming the directory', async () => {
    await rejectsWith(FileVolume.createSparse(nodeFs, join(dir, 'nope', 'x.img'), MiB), NotFoundError, join(dir, 'nope'))
  })

  test('when power is lost right after createSparse resolves, then the image and its size survive', async () => {
    const mem = new MemoryFs()
    mem.seedDir('/vol')
    await FileVolume.createSparse(mem, '/vol/c.img', 64 * 1024)
    const after = mem.crash({kind: 'durable'})
    assert.equal((await after.stat('/vol/c.img')).size, 64 * 1024)
  })
})

describe('openVolume', () => {
  test('given a regular file, then a FileVolume; given a directory, a character device, a missing path, an unreachable or malformed NBD URI, then a one-line expected error', async () => {
    const p = await fileWith(Buffer.alloc(4096))
    const v = await openVolume(nodeFs, p, {write: false})
    assert.ok(v instanceof FileVolume && !(v instanceof BlockVolume))
    assert.equal(v.kind, 'file')
    await v.close()
    await rejectsWith(openVolume(nodeFs, dir, {write: false}), UsageError, dir, 'directory')
    await rejectsWith(openVolume(nodeFs, '/dev/null', {write: false}), UsageError, '/dev/null', 'neither a regular file nor a block device')
    await rejectsWith(openVolume(nodeFs, join(dir, 'missing.img'), {write: false}), NotFoundError, 'missing.img')
    // A socket nobody listens on: a RemoteError naming where (fast: ENOENT, no time-out).
    const missingSock = join(dir, 'nobody.sock')
    await rejectsWith(openVolume(nodeFs, `nbd+unix:///x?socket=${missingSock}`, {write: false}), RemoteError, missingSock)
    // nbds:// without credentials, and a malformed URI: usage errors naming the URI.
    await rejectsWith(openVolume(nodeFs, `nbds+unix:///x?socket=${missingSock}`, {write: false}), UsageError)
    await rejectsWith(openVolume(nodeFs, 'nbd+unix:///x', {write: false}), UsageError, 'nbd+unix:///x', 'socket')
    // Known size: a remote that is down still opens (its requests fail until it answers).
    const deferred = await openVolume(nodeFs, `nbd+unix:///x?socket=${missingSock}`, {write: true, knownSize: 1 << 20})
    assert.equal(deferred.kind, 'nbd')
    assert.equal(deferred.size, 1 << 20)
    await assert.rejects(deferred.read(0, 4096), RemoteError)
    await deferred.close()
  })
})

describe('majorMinor', () => {
  /** glibc's gnu_dev_makedev, in BigInt. */
  const makedev = (major: number, minor: number): number => {
    const M = BigInt(major)
    const m = BigInt(minor)
    return Number(((M & 0xfffn) << 8n) | ((M & ~0xfffn) << 32n) | (m & 0xffn) | ((m & ~0xffn) << 12n))
  }
  test('then it inverts makedev, including majors and minors past 12 and 20 bits', () => {
    for (const [M, m] of [[8, 1], [7, 0], [259, 3], [253, 0], [4095, 255], [4096 + 5, 300], [0xfffff, 0xfffff], [1, 0xffffffff], [0x7ffff, 0x7fffffff]]) {
      assert.equal(majorMinor(makedev(M, m)), `${M}:${m}`)
    }
  })
})

describe('identity: is the clone the source under another name?', () => {
  test('given a hard link to the source; then sameVolume, and checkCloneCandidate refuses naming both paths', async () => {
    const src = await fileWith(Buffer.alloc(4096))
    const link = join(dir, 'hardlink.img')
    await fsp.link(src, link)
    assert.ok(sameVolume(await resolveIdentity(nodeFs, src), await resolveIdentity(nodeFs, link)))
    await rejectsWith(checkCloneCandidate(nodeFs, src, link, []), RefusedError, src, link, 'under another name')
  })

  test('given a symlink to the source (and a symlink to its directory); then both are refused', async () => {
    const src = await fileWith(Buffer.alloc(4096))
    const sym = join(dir, 'symlink.img')
    await fsp.symlink(src, sym)
    const dirLink = join(dir, 'dirlink')
    await fsp.symlink(dir, dirLink)
    const viaDir = join(dirLink, src.slice(dir.length + 1))
    const id = await resolveIdentity(nodeFs, sym)
    assert.equal(id.realPath, src, 'realPath resolves the symlink')
    await rejectsWith(checkCloneCandidate(nodeFs, src, sym, []), RefusedError, src, sym)
    await rejectsWith(checkCloneCandidate(nodeFs, src, viaDir, []), RefusedError, src, viaDir)
  })

  test('given the same path twice; then refused', async () => {
    const src = await fileWith(Buffer.alloc(4096))
    await rejectsWith(checkCloneCandidate(nodeFs, src, src, []), RefusedError, src)
  })

  test('given two different files of equal content; then not the same volume and accepted', async () => {
    const a = await fileWith(Buffer.alloc(4096, 9))
    const b = await fileWith(Buffer.alloc(4096, 9))
    assert.equal(sameVolume(await resolveIdentity(nodeFs, a), await resolveIdentity(nodeFs, b)), false)
    await checkCloneCandidate(nodeFs, a, b, [])
  })

  test('given a clone already used by another group (under another name); then refused naming the group, its clone and both paths', async () => {
    const src = await fileWith(Buffer.alloc(4096))
    const taken = await fileWith(Buffer.alloc(4096))
    const alias = join(dir, 'alias-of-taken.img')
    await fsp.link(taken, alias)
    const used = [
      {group: 'db', clone: '(source)', path: join(dir, 'gone.img')},
      {group: 'web', clone: 'nightly', path: taken},
    ]
    await rejectsWith(checkCloneCandidate(nodeFs, src, alias, used), RefusedError, alias, taken, 'group web', 'clone nightly')
    await rejectsWith(checkCloneCandidate(nodeFs, src, taken, [{group: 'db', clone: '(source)', path: taken}]), RefusedError, 'group db', 'as its source')
  })

  test('given a missing clone or source; then NotFoundError naming the path, with a fix', async () => {
    const src = await fileWith(Buffer.alloc(4096))
    const missing = join(dir, 'no-such-clone.img')
    const e = await rejectsWith(checkCloneCandidate(nodeFs, src, missing, []), NotFoundError, missing)
    assert.equal((e as NotFoundError).fix, 'create it, or pass --create to make a sparse image')
    await rejectsWith(checkCloneCandidate(nodeFs, join(dir, 'no-such-source.img'), src, []), NotFoundError, 'no-such-source.img')
    await rejectsWith(resolveIdentity(nodeFs, missing), NotFoundError, missing)
  })

  test('given a directory as the clone; then a bad path (exit 2, as for a source), named as a directory', async () => {
    const src = await fileWith(Buffer.alloc(4096))
    await rejectsWith(checkCloneCandidate(nodeFs, src, dir, []), UsageError, dir, 'is a directory')
  })

  test('given identities of loop devices and partitions; then overlap decides, not names', () => {
    const file: VolumeIdentity = {realPath: '/srv/src.img', kind: 'file', dev: 2049, ino: 12}
    const other: VolumeIdentity = {realPath: '/srv/b.img', kind: 'file', dev: 2049, ino: 13}
    const loop = (mm: string, offset: number, size: number, over: VolumeIdentity): VolumeIdentity => ({realPath: `/dev/loop${mm.split(':')[1]}`, kind: 'block', majorMinor: mm, size, within: {identity: over, offset, relation: 'loop'}})
    const disk: VolumeIdentity = {realPath: '/dev/sdb', kind: 'block', majorMinor: '8:16', size: 100 * MiB}
    const part = (mm: string, start: number, size: number, of: VolumeIdentity): VolumeIdentity => ({realPath: `/dev/p${mm}`, kind: 'block', majorMinor: mm, size, within: {identity: of, offset: start, relation: 'partition'}})

    assert.ok(sameVolume(file, loop('7:0', 0, MiB, file)), 'a loop device over the source file')
    assert.ok(sameVolume(loop('7:0', 0, MiB, file), loop('7:1', 0, MiB, file)), 'two loop devices over one file')
    assert.ok(!sameVolume(loop('7:0', 0, MiB, file), loop('7:1', MiB, MiB, file)), 'two loop devices over disjoint ranges of one file')
    assert.ok(sameVolume(loop('7:0', 0, 2 * MiB, file), loop('7:1', MiB, MiB, file)), 'overlapping ranges of one file')
    assert.ok(!sameVolume(other, loop('7:0', 0, MiB, file)), 'a loop device over another file')
    assert.ok(sameVolume(disk, part('8:17', MiB, 10 * MiB, disk)), 'a partition of the source disk')
    assert.ok(!sameVolume(part('8:17', MiB, 10 * MiB, disk), part('8:18', 11 * MiB, 10 * MiB, disk)), 'two partitions of one disk')
    const loopDisk = loop('7:2', 0, 100 * MiB, file)
    assert.ok(sameVolume(file, part('259:0', MiB, MiB, loopDisk)), 'a partition of a loop device over the source file')
    assert.ok(!sameVolume(loop('7:3', 0, MiB, file), part('259:0', MiB, MiB, loopDisk)), 'a partition and a loop device over disjoint ranges of one file')
    assert.ok(sameVolume(disk, {...disk, realPath: '/dev/disk/by-id/x'}), 'one device, two names')

    const on = (path: string, ino: number, host: VolumeIdentity): VolumeIdentity => ({realPath: path, kind: 'file', dev: 99, ino, hostDevice: host})
    assert.ok(!sameVolume(on('/mnt/a.img', 1, disk), on('/mnt/b.img', 2, disk)), 'two files on one file system')
    assert.ok(sameVolume(disk, on('/mnt/a.img', 1, disk)), 'a file on a file system on the source device')
    assert.ok(sameVolume(on('/mnt/a.img', 1, part('8:17', MiB, 10 * MiB, disk)), disk), 'a file on a partition of the source disk')
    assert.ok(!sameVolume(on('/mnt/a.img', 1, part('8:17', MiB, 10 * MiB, disk)), part('8:18', 11 * MiB, 10 * MiB, disk)), 'a file on one partition, another partition')
    assert.ok(sameVolume(file, on('/mnt/c.img', 3, loop('7:4', 0, MiB, file))), 'a file on a file system on a loop device over the source file')
  })
})

describe('checkCloneSize', () => {
  test('given a clone smaller than the source; then RefusedError naming both paths and both sizes in bytes', () => {
    assert.throws(
      () => checkCloneSize('/srv/src.img', 1_048_576, '/srv/c.img', 1_048_064),
      (e: unknown) => e instanceof RefusedError && ['/srv/src.img', '/srv/c.img', '1048576 bytes', '1048064 bytes'].every((s) => e.message.includes(s)),
    )
  })
  test('given a clone of equal or larger size; then accepted', () => {
    checkCloneSize('/s', 4096, '/c', 4096)
    checkCloneSize('/s', 4096, '/c', 8192)
  })
})
