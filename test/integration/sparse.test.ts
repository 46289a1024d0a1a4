/**
 * Sparse images: a 1 GiB source holding 10 MiB of data syncs to a `--create`d clone that
 * stays sparse (zero extents are never written to a fresh sparse image), and the two are
 * byte-identical.
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {allocated, Cli, cmp, GiB, MiB, sparseImage, tempDir} from '../helpers/cli.js'

let dir: string
let cli: Cli
before(async () => {
  dir = await tempDir('sparse')
  cli = new Cli(join(dir, 'state'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

describe('sparse images', () => {
  test('a 1 GiB source with 10 MiB of data syncs to a --create\'d clone allocating at most 2× the source; cmp identical', async () => {
    const src = join(dir, 'src.img')
    const clone = join(dir, 'clone.img')
    // 10 MiB of random data at a few offsets, some not extent-aligned.
    const writes = [
      {offset: 0, data: randomBytes(2 * MiB)},
      {offset: 100 * MiB + 12_345, data: randomBytes(3 * MiB)},
      {offset: 512 * MiB, data: randomBytes(4 * MiB)},
      {offset: GiB - MiB, data: randomBytes(MiB)},
    ]
    await sparseImage(src, GiB, writes)
    const srcAlloc = await allocated(src)
    assert.ok(srcAlloc >= 10 * MiB && srcAlloc < 64 * MiB, `the source allocates about 10 MiB (${srcAlloc})`)
    await cli.ok(['group', 'create', 'sp', '--source', src])
    const out = await cli.json(['clone', 'add', 'sp', 'c', '--path', clone, '--create'])
    assert.equal(out.sync.completed, true)
    assert.ok(out.sync.skippedBytes >= GiB - 16 * MiB, `zero extents skipped (${out.sync.skippedBytes} bytes)`)
    assert.equal((await fsp.stat(clone)).size, GiB)
    const cloneAlloc = await allocated(clone)
    assert.ok(cloneAlloc <= 2 * srcAlloc, `clone allocates ${cloneAlloc} bytes, source ${srcAlloc}`)
    assert.ok(cmp(src, clone).same, 'byte-identical')
    const s = await cli.status('sp')
    assert.equal(s.clones[0].state, 'synchronized')
  })
})
