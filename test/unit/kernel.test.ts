/**
 * The kernel calls through koffi (src/volume/kernel.ts) as volumes use them: extents() of a
 * sparse file finds exactly its data runs (lseek SEEK_DATA/SEEK_HOLE), trim() frees blocks
 * (fallocate PUNCH_HOLE: stat's block count drops), writeZeroes() keeps them (ZERO_RANGE),
 * and without koffi one warning and the old behaviour (holes are data, zeros are written).
 * Real files in a temp directory; the in-memory volume for the fallback.
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {createRequire} from 'node:module'
import {release, tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, afterEach, before, describe, test} from 'node:test'
import {MemoryFs} from '../support/MemoryFs.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {FileVolume} from '../../src/volume/FileVolume.js'
import {handBackMemory} from '../../src/io/handBackMemory.js'
import {kernel, resetKernelForTest, setKernelWarning} from '../../src/volume/kernel.js'

const KiB = 1024
const MiB = 1024 * KiB
let dir: string
let n = 0

before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'clonectl-kernel-'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})
afterEach(() => {
  delete process.env.CLONECTL_NO_KOFFI
  resetKernelForTest()
})

/** A sparse file of `size` bytes with random data written at each [offset, length). */
async function sparseFile(size: number, runs: Array<[number, number]>): Promise<string> {
  const p = join(dir, `s${n++}.img`)
  const fh = await fsp.open(p, 'w+')
  await fh.truncate(size)
  for (const [off, len] of runs) await fh.write(randomBytes(len), 0, len, off)
  await fh.sync()
  await fh.close()
  return p
}

const blocks = async (p: string): Promise<number> => (await fsp.stat(p)).blocks

describe('koffi loads on this machine', () => {
  test('kernel() binds lseek, fallocate and ioctl', () => {
    assert.ok(kernel(), 'koffi 3 loads on Node 20 here; the tests below need it')
  })

  test("on this glibc machine, kernel() loads koffi's prebuilt glibc binary itself, not through koffi's loader (6 ms at every start)", () => {
    assert.ok(kernel())
    const loaded = Object.keys(createRequire(import.meta.url).cache)
    assert.ok(
      loaded.some((f) => f.endsWith(`/linux_${process.arch}/koffi.node`)),
      'the glibc binary is loaded',
    )
    assert.ok(!loaded.some((f) => /\/koffi\/(src\/koffi\/)?index\.c?js$/.test(f)), "koffi's loader is not")
  })

  test('kernel() binds glibc malloc_trim (serve hands memory back with it), and calling it answers whether it freed anything', () => {
    const trim = kernel()?.mallocTrim
    assert.ok(trim, 'glibc has malloc_trim')
    assert.equal(typeof trim(), 'boolean')
  })

  test('pagesCached (cachestat, Linux 6.5+): pages just written are cached, a hole never read is not, a range partly cached is not wholly', async () => {
    const p = await sparseFile(8 * MiB, [[MiB, MiB]])
    // sparseFile wrote [1 MiB, 2 MiB) through the page cache; [4 MiB, 8 MiB) is a hole never read.
    const fh = await fsp.open(p, 'r')
    try {
      const [major, minor] = release().split('.').map(Number)
      const k = kernel()
      assert.ok(k)
      if (major > 6 || (major === 6 && minor >= 5)) {
        assert.equal(k.pagesCached(fh.fd, MiB, MiB), true, 'just written')
        assert.equal(k.pagesCached(fh.fd, MiB + 4096, 64 * KiB), true, 'a part of it')
        assert.equal(k.pagesCached(fh.fd, 4 * MiB, 4 * MiB), false, 'a hole never read')
        assert.equal(k.pagesCached(fh.fd, MiB, 2 * MiB), false, 'half cached is not wholly')
        // An unaligned range counts every page it touches.
        assert.equal(k.pagesCached(fh.fd, 2 * MiB - 100, 200), false)
        await fh.read(Buffer.alloc(4096), 0, 4096, 2 * MiB)
        assert.equal(k.pagesCached(fh.fd, 2 * MiB - 100, 200), true, 'once the page after it is read too')
      } else assert.equal(k.pagesCached(fh.fd, MiB, MiB), undefined, 'no cachestat before Linux 6.5: undefined, not a guess')
    } finally {
      await fh.close()
    }
  })

  test('given koffi, handBackMemory runs a GC and malloc_trim', async () => {
    const r = await handBackMemory()
    assert.equal(r.collected, true)
    assert.equal(typeof r.trimmed, 'boolean')
  })
})

describe('extents(): a sparse file by SEEK_DATA / SEEK_HOLE', () => {
  test('given data at 1 MiB (64 KiB), 8 MiB (4 KiB) and the last 4 KiB of 16 MiB, extents finds exactly those runs', async () => {
    const size = 16 * MiB
    const p = await sparseFile(size, [
      [1 * MiB, 64 * KiB],
      [8 * MiB, 4 * KiB],
      [size - 4 * KiB, 4 * KiB],
    ])
    const v = await FileVolume.open(nodeFs, p, {write: false})
    try {
      assert.deepEqual(await v.extents(0, size), [
        {offset: 0, length: 1 * MiB, kind: 'hole'},
        {offset: 1 * MiB, length: 64 * KiB, kind: 'data'},
        {offset: 1 * MiB + 64 * KiB, length: 7 * MiB - 64 * KiB, kind: 'hole'},
        {offset: 8 * MiB, length: 4 * KiB, kind: 'data'},
        {offset: 8 * MiB + 4 * KiB, length: 8 * MiB - 8 * KiB, kind: 'hole'},
        {offset: size - 4 * KiB, length: 4 * KiB, kind: 'data'},
      ])
      // Clipped to the request, starting and ending inside runs.
      assert.deepEqual(await v.extents(1 * MiB + 4 * KiB, 7 * MiB), [
        {offset: 1 * MiB + 4 * KiB, length: 60 * KiB, kind: 'data'},
        {offset: 1 * MiB + 64 * KiB, length: 7 * MiB - 64 * KiB, kind: 'hole'},
        {offset: 8 * MiB, length: 4 * KiB, kind: 'data'},
      ])
      assert.deepEqual(await v.extents(2 * MiB, 4096), [{offset: 2 * MiB, length: 4096, kind: 'hole'}])
      assert.deepEqual(await v.extents(0, 0), [])
      await assert.rejects(v.extents(size - 4096, 8192), /past the end/)
    } finally {
      await v.close()
    }
  })

  test('a file with no data at all is one hole', async () => {
    const p = await sparseFile(4 * MiB, [])
    const v = await FileVolume.open(nodeFs, p, {write: false})
    try {
      assert.deepEqual(await v.extents(0, 4 * MiB), [{offset: 0, length: 4 * MiB, kind: 'hole'}])
    } finally {
      await v.close()
    }
  })
})

describe('trim() and writeZeroes(): zeros that keep holes', () => {
  test('given 4 MiB of data, trim frees its blocks (stat blocks drop), reads zeros, and extents then sees a hole', async () => {
    const p = await sparseFile(8 * MiB, [[2 * MiB, 4 * MiB]])
    const before = await blocks(p)
    assert.ok(before >= (4 * MiB) / 512, `4 MiB allocated first (${before} blocks)`)
    const v = await FileVolume.open(nodeFs, p, {write: true})
    try {
      await v.trim(2 * MiB, 4 * MiB)
      await v.flush()
      const afterTrim = await blocks(p)
      assert.ok(afterTrim <= before - (4 * MiB) / 512, `blocks ${before} -> ${afterTrim}: 4 MiB freed`)
      assert.ok((await v.read(2 * MiB, 4 * MiB)).equals(Buffer.alloc(4 * MiB)), 'reads as zeros')
      assert.deepEqual(await v.extents(0, 8 * MiB), [{offset: 0, length: 8 * MiB, kind: 'hole'}])
    } finally {
      await v.close()
    }
  })

  test('an unaligned trim zeros exactly its bytes, the neighbours untouched', async () => {
    const p = await sparseFile(1 * MiB, [[0, 1 * MiB]])
    const v = await FileVolume.open(nodeFs, p, {write: true})
    try {
      const was = await v.read(0, 1 * MiB)
      await v.trim(100, 70_000)
      const now = await v.read(0, 1 * MiB)
      const want = Buffer.from(was)
      want.fill(0, 100, 70_100)
      assert.ok(now.equals(want))
    } finally {
      await v.close()
    }
  })

  test('writeZeroes without punch reads zeros and keeps the blocks allocated (ZERO_RANGE)', async () => {
    const p = await sparseFile(8 * MiB, [[0, 8 * MiB]])
    const before = await blocks(p)
    const v = await FileVolume.open(nodeFs, p, {write: true})
    try {
      await v.writeZeroes(1 * MiB, 4 * MiB)
      await v.flush()
      assert.ok((await v.read(1 * MiB, 4 * MiB)).equals(Buffer.alloc(4 * MiB)))
      assert.ok((await blocks(p)) >= before, 'nothing freed')
      await v.writeZeroes(1 * MiB, 4 * MiB, {punch: true})
      await v.flush()
      assert.ok((await blocks(p)) <= before - (4 * MiB) / 512, 'with punch, freed')
    } finally {
      await v.close()
    }
  })
})

describe('without koffi: one warning, and what Node alone can do', () => {
  test('given koffi cannot load, serve still hands memory back as far as Node can: a GC, no malloc_trim, the one warning', async () => {
    process.env.CLONECTL_NO_KOFFI = '1'
    resetKernelForTest()
    const warnings: string[] = []
    const old = setKernelWarning((m) => warnings.push(m))
    try {
      assert.deepEqual(await handBackMemory(), {collected: true, trimmed: undefined})
      assert.equal(warnings.length, 1)
      assert.match(warnings[0], /koffi could not load/)
    } finally {
      setKernelWarning(old)
    }
  })

  test('given koffi cannot load, extents is one data run, trim writes zeros, and the warning names koffi once', async () => {
    process.env.CLONECTL_NO_KOFFI = '1'
    resetKernelForTest()
    const warnings: string[] = []
    const old = setKernelWarning((m) => warnings.push(m))
    try {
      const p = await sparseFile(4 * MiB, [[1 * MiB, 1 * MiB]])
      const v = await FileVolume.open(nodeFs, p, {write: true})
      try {
        assert.deepEqual(await v.extents(0, 4 * MiB), [{offset: 0, length: 4 * MiB, kind: 'data'}])
        const before = await blocks(p)
        await v.trim(1 * MiB, 1 * MiB)
        await v.flush()
        assert.ok((await v.read(1 * MiB, 1 * MiB)).equals(Buffer.alloc(1 * MiB)))
        assert.ok((await blocks(p)) >= before, 'zeros written, nothing freed')
      } finally {
        await v.close()
      }
      assert.equal(warnings.length, 1, warnings.join('\n'))
      assert.match(warnings[0], /koffi could not load .*holes are read and copied as data/)
    } finally {
      setKernelWarning(old)
    }
  })

  test('the in-memory volume (no fd) answers one data run and trims by writing zeros', async () => {
    const fs = new MemoryFs()
    await fs.mkdirp('/v')
    await FileVolume.createSparse(fs, '/v/a.img', 64 * KiB)
    const v = await FileVolume.open(fs, '/v/a.img', {write: true})
    await v.write(0, Buffer.alloc(64 * KiB, 7))
    await v.trim(4096, 8192)
    const got = await v.read(0, 64 * KiB)
    const want = Buffer.alloc(64 * KiB, 7)
    want.fill(0, 4096, 12_288)
    assert.ok(got.equals(want))
    assert.deepEqual(await v.extents(0, 64 * KiB), [{offset: 0, length: 64 * KiB, kind: 'data'}])
    await v.close()
  })
})

describe('many zeroing calls at once', () => {
  test('given 600 trims in flight together (more than koffi queues), every one completes and reads zeros', async () => {
    const p = await sparseFile(600 * 4096, [[0, 600 * 4096]])
    const v = await FileVolume.open(nodeFs, p, {write: true})
    try {
      await Promise.all(Array.from({length: 600}, (_, i) => v.trim(i * 4096, 4096)))
      assert.ok((await v.read(0, 600 * 4096)).equals(Buffer.alloc(600 * 4096)))
    } finally {
      await v.close()
    }
  })
})
