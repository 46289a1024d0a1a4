/**
 * TRIM and WRITE_ZEROES keep volumes sparse (issue 16, item 3): through `serve`, with one
 * synchronized (mirrored) clone and one fractured clone, a host's discard and a write of
 * zeros that may unmap free blocks on the source and on the mirrored clone alike; a write of
 * zeros with NO_HOLE keeps them allocated. The clones stay comparable byte for byte, and the
 * fractured clone's delta map records each of them as a write.
 */
import assert from 'node:assert/strict'
import {stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {clonectlOk, has, MiB, runOk, sameContent, startServe, statusJson, tempDir, needTool, type Served} from '../helpers/serve.js'

const SIZE = 32 * MiB
const allocated = async (p: string): Promise<number> => (await stat(p)).blocks * 512

describe('TRIM and WRITE_ZEROES through serve free space on the source and on a mirrored clone', {concurrency: 1}, () => {
  let dir: string
  let state: string
  let served: Served
  const src = (): string => join(dir, 'src.img')
  const mirrored = (): string => join(dir, 'c1.img')
  const io = (cmd: string): Promise<unknown> => runOk('qemu-io', ['-f', 'raw', served.uri, '-c', cmd])

  before(async () => {
    needTool(!has('qemu-io', '--version') && 'qemu-io (qemu-utils)')
    dir = await tempDir('trim')
    state = join(dir, 'state')
    await writeFile(src(), Buffer.alloc(0))
    await runOk('truncate', ['-s', String(SIZE), src()])
    await clonectlOk(state, ['group', 'create', 'g', '--source', src()])
    await clonectlOk(state, ['clone', 'add', 'g', 'c1', '--path', mirrored(), '--create'])
    await clonectlOk(state, ['clone', 'add', 'g', 'c2', '--path', join(dir, 'c2.img'), '--create'])
    await clonectlOk(state, ['clone', 'fracture', 'g', 'c2'])
    served = await startServe(state, 'g')
  })
  after(async () => {
    await served?.stop()
  })

  test('given 16 MiB written, when the host discards it, then both images free it, read zeros and stay equal; the fractured clone records it', async () => {
    await io('write -P 0xab 0 16M')
    await io('flush')
    const before = {src: await allocated(src()), c1: await allocated(mirrored())}
    assert.ok(before.src >= 16 * MiB && before.c1 >= 16 * MiB, `the data is allocated (${before.src}, ${before.c1})`)
    await io('discard 0 16M')
    await io('flush')
    const after = {src: await allocated(src()), c1: await allocated(mirrored())}
    assert.ok(after.src <= before.src - 15 * MiB, `TRIM freed the source's blocks: ${before.src} -> ${after.src}`)
    assert.ok(after.c1 <= before.c1 - 15 * MiB, `TRIM freed the mirrored clone's blocks: ${before.c1} -> ${after.c1}`)
    await io('read -P 0 0 16M')
    assert.ok(await sameContent(src(), mirrored()), 'source and mirrored clone are equal byte for byte')
    const s = await statusJson(state, 'g')
    const c2 = s.clones.find((c) => c.name === 'c2')!
    assert.ok(c2.dirtyExtents >= (16 * MiB) / (64 * 1024), `the fractured clone's map records the trimmed range (${c2.dirtyExtents} dirty)`)
  })

  test('given data again, when zeros are written that may unmap, then blocks are freed; with NO_HOLE they stay allocated', async () => {
    await io('write -P 0xcd 0 16M')
    await io('flush')
    const full = await allocated(src())
    await io('write -z -u 0 8M')
    await io('flush')
    const punched = await allocated(src())
    assert.ok(punched <= full - 7 * MiB, `WRITE_ZEROES without NO_HOLE freed blocks: ${full} -> ${punched}`)
    await io('write -z 8M 8M')
    await io('flush')
    const kept = await allocated(src())
    assert.ok(kept >= punched - MiB, `WRITE_ZEROES with NO_HOLE keeps the range allocated: ${punched} -> ${kept}`)
    await io('read -P 0 0 16M')
    assert.ok(await sameContent(src(), mirrored()), 'source and mirrored clone are equal byte for byte')
  })
})
