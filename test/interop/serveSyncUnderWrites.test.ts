/**
 * `clonectl clone sync` from another shell while a host writes through `clonectl serve` all
 * the time (issue 14): the sync finishes while the writes go on, copies at most 1.5x the
 * volume, and the clone equals the source once fractured.
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {MiB, NbdTestClient, type Served, clonectl, clonectlOk, prng, sameContent, startServe, statusJson, tempDir} from '../helpers/serve.js'

const SIZE = 64 * MiB
const BS = 4096

let dir: string
let state: string
let src: string
let served: Served | undefined

before(async () => {
  dir = await tempDir('sync-writes')
  state = join(dir, 'state')
  src = join(dir, 'src.img')
  await fsp.writeFile(src, randomBytes(SIZE))
  await clonectlOk(state, ['group', 'create', 'g', '--source', src])
  await clonectlOk(state, ['clone', 'add', 'g', 'c', '--path', join(dir, 'c.img'), '--create'])
  await clonectlOk(state, ['clone', 'fracture', 'g', 'c'])
})

after(async () => {
  if (served) await served.stop('SIGKILL')
  await fsp.rm(dir, {recursive: true, force: true})
})

describe('clone sync under a continuous writer through serve', () => {
  test('given clone c fractured and the whole source rewritten, when c is synced from another shell while 8 writers keep writing, then the sync finishes while they write, copies at most 1.5x the volume, and c equals the source', async () => {
    served = await startServe(state, 'g')
    const client = await NbdTestClient.connect(served.socket)
    // Every extent of c differs from the source.
    for (let off = 0; off < SIZE; off += 4 * MiB) await client.write(off, randomBytes(4 * MiB))
    await client.flush()
    assert.equal((await statusJson(state, 'g')).clones[0].dirtyExtents, SIZE / 65536)

    // 8 writers, 4 KiB random writes, each in its own stripe of blocks (no two writes in flight
    // overlap), until told to stop (or a minute passes: then the test fails below).
    let stop = false
    let writes = 0
    const rand = prng(14)
    const blocks = SIZE / BS
    const t0 = Date.now()
    const writer = async (j: number): Promise<void> => {
      while (!stop && Date.now() - t0 < 60_000) {
        const b = j + 8 * Math.floor(rand() * (blocks / 8))
        await client.write(b * BS, Buffer.alloc(BS, 1 + Math.floor(rand() * 250)))
        writes++
      }
    }
    const writers = Array.from({length: 8}, (_, j) => writer(j))
    const atStart = writes
    const r = await clonectl(state, ['clone', 'sync', 'g', 'c', '--json'], {timeoutMs: 120_000})
    const during = writes - atStart
    const stillWriting = !stop && Date.now() - t0 < 60_000
    stop = true
    await Promise.all(writers)
    assert.equal(r.code, 0, r.stderr)
    assert.ok(stillWriting, `the sync finished only once the writers stopped (${writes} writes)`)
    assert.ok(during >= 100, `only ${during} host writes during the sync: not a write load`)
    const out = JSON.parse(r.stdout) as {completed: boolean; copiedBytes: number; collisions: number}
    assert.equal(out.completed, true)
    assert.ok(out.copiedBytes <= 1.5 * SIZE, `copied ${out.copiedBytes} bytes for a ${SIZE}-byte volume (${out.collisions} collisions, ${during} host writes)`)
    console.log(`sync under writes: ${during} host writes during the sync, copied ${(out.copiedBytes / MiB).toFixed(1)} MiB, ${out.collisions} collisions`)

    await client.flush()
    await client.disconnect()
    await clonectlOk(state, ['clone', 'fracture', 'g', 'c'])
    assert.ok(await sameContent(src, join(dir, 'c.img')), 'c == source')
    const s = await served.stop('SIGTERM')
    served = undefined
    assert.equal(s.code, 0)
  })
})
