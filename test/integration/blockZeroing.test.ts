/**
 * BlockVolume's zeroing through the kernel (kernel.ts): on a loop device over an image
 * file, trim() reaches the device as WRITE ZEROES with unmap (fallocate PUNCH_HOLE on the
 * device; discard_zeroes_data is 0 on current kernels, so never a bare BLKDISCARD), which
 * the loop driver turns into a hole in its backing file: the file's blocks drop. Needs root
 * and losetup, else skipped by name with the reason; every loop device is detached in a
 * finally block.
 */
import assert from 'node:assert/strict'
import {execFileSync, spawnSync} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {BlockVolume} from '../../src/volume/BlockVolume.js'

const MiB = 1024 * 1024
const canLoop = process.getuid?.() === 0 && spawnSync('losetup', ['--version'], {stdio: 'ignore'}).status === 0
const needLoop = canLoop ? false : 'needs root and losetup'

let dir: string
before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'clonectl-blockzero-'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

async function withLoop<T>(file: string, fn: (dev: string) => Promise<T>): Promise<T> {
  const dev = execFileSync('losetup', ['-f', '--show', file], {encoding: 'utf8'}).trim()
  try {
    return await fn(dev)
  } finally {
    execFileSync('losetup', ['-d', dev])
  }
}

describe('BlockVolume: zeros through the device', () => {
  test('given a loop device over 8 MiB of data, trim zeros 4 MiB and frees them in the backing file; writeZeroes and an unaligned trim read zeros', {skip: needLoop}, async () => {
    const img = join(dir, 'a.img')
    const data = randomBytes(8 * MiB)
    await fsp.writeFile(img, data)
    const before = (await fsp.stat(img)).blocks
    await withLoop(img, async (dev) => {
      const v = await BlockVolume.open(nodeFs, dev, {write: true})
      try {
        await v.trim(2 * MiB, 4 * MiB)
        await v.writeZeroes(0, 1 * MiB)
        await v.trim(7 * MiB + 100, 1000)
        await v.flush()
        const want = Buffer.from(data)
        want.fill(0, 2 * MiB, 6 * MiB)
        want.fill(0, 0, 1 * MiB)
        want.fill(0, 7 * MiB + 100, 7 * MiB + 1100)
        assert.ok((await v.read(0, 8 * MiB)).equals(want), 'the device reads the zeros, the rest intact')
        // A block device has no holes to report: lseek answers it all as data.
        assert.deepEqual(await v.extents(0, 8 * MiB), [{offset: 0, length: 8 * MiB, kind: 'data'}])
      } finally {
        await v.close()
      }
    })
    const afterTrim = (await fsp.stat(img)).blocks
    assert.ok(afterTrim <= before - (4 * MiB) / 512, `backing file blocks ${before} -> ${afterTrim}: the trimmed 4 MiB freed`)
  })
})
