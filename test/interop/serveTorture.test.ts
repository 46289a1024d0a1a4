/**
 * SIGKILL torture of `clonectl serve` during a protected restore (DESIGN §4 INV-4, §7 "real
 * processes"): a writer of our own sends random writes with flushes through the export and
 * records which writes a FLUSH has covered; serve is killed with SIGKILL at random moments
 * (at least 20 times while the restore is running) and started again each time, which
 * resumes the restore in the background; the restore is slowed through the control socket
 * (`rate`) so the kills land inside it.
 *
 * At the end: the restore completed; every block holds its last flushed write or a later
 * write (never older data, never data from the clone under a flushed write); a block no
 * flushed write covers holds the clone's data or one of the writes made to it; the clone's
 * sha256 never changed. (A SIGKILL is a process crash: the page cache survives. Power loss
 * is test/crash's job.)
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {controlRequest} from '../../src/control/ControlClient.js'
import {MiB, NbdTestClient, type Served, clonectl, clonectlOk, has, prng, sha256File, sleep, startServe, tempDir, needTool} from '../helpers/serve.js'

const SIZE = 128 * MiB
const BLOCK = 4096
/**
 * Host writes stay in the last 8 MiB: COD there, the sync engine everywhere else. (Near the
 * sync engine's cursor a host request waits for the chunk it has claimed, and that chunk
 * waits for the rate limiter: see the report on SyncEngine.)
 */
const HOT = 8 * MiB
const HOT_FIRST = (SIZE - HOT) / BLOCK
const RATE = 4 * MiB
const KILLS = 20
const MAGIC = 0x7e57b10c

const seed = Number(process.env.SERVE_TORTURE_SEED ?? Math.floor(Math.random() * 2 ** 31))
console.log(`serveTorture seed ${seed} (replay with SERVE_TORTURE_SEED=${seed})`)
const rnd = prng(seed)
const randInt = (n: number): number => Math.floor(rnd() * n)

let dir: string
let state: string
let src: string
let cl: string
let served: Served | undefined

before(async () => {
  dir = await tempDir('torture')
  state = join(dir, 'state')
  src = join(dir, 'src.img')
  cl = join(dir, 'clone.img')
})

after(async () => {
  if (served) await served.stop('SIGKILL')
  await fsp.rm(dir, {recursive: true, force: true})
})

/** A 4 KiB block stamped with the write that made it: magic, write id, block number, filler. */
function stamped(writeId: number, block: number): Buffer {
  const b = Buffer.alloc(BLOCK)
  b.writeUInt32BE(MAGIC, 0)
  b.writeUInt32BE(writeId, 4)
  b.writeUInt32BE(block, 8)
  for (let i = 12; i < BLOCK; i += 4) b.writeUInt32BE((Math.imul(writeId, 2654435761) ^ Math.imul(block, 40503) ^ i) >>> 0, i)
  return b
}

/** Per block: the last write a FLUSH covered, and every write issued to it (ids ascending). */
interface BlockHistory {
  flushed: number
  writes: number[]
}

describe('serve under SIGKILL during a protected restore, with a flushing writer', () => {
  before(() => needTool(has('qemu-io', '--version') ? false : 'needs qemu-io'))
  test(`≥ ${KILLS} SIGKILLs: flushed writes intact, clone unchanged, restore completed`, async () => {
    // Given: a source, a clone synced and fractured, then the source overwritten everywhere.
    const srcData = randomBytes(SIZE)
    await fsp.writeFile(src, srcData)
    await clonectlOk(state, ['group', 'create', 't', '--source', src])
    await clonectlOk(state, ['clone', 'add', 't', 'c', '--path', cl, '--create'])
    await clonectlOk(state, ['clone', 'fracture', 't', 'c'])
    const cloneSum = await sha256File(cl)
    const cloneData = await fsp.readFile(cl)
    served = await startServe(state, 't')
    const w0 = await NbdTestClient.connect(served.socket)
    for (let off = 0; off < SIZE; off += 4 * MiB) await w0.write(off, randomBytes(4 * MiB))
    await w0.flush()
    await w0.disconnect()
    const control = (): string => join(state, 'groups', 't', 'control.sock')

    // When: a slow protected restore, from another shell.
    const restoreCmd = clonectl(state, ['restore', 't', 'c', '--yes', '--rate', String(RATE)], {timeoutMs: 300_000})
    for (let i = 0; ; i++) {
      const s = await controlRequest<{operation?: unknown}>(control(), {op: 'status'})
      if (s.operation) break
      assert.ok(i < 400, 'the restore did not start')
      await sleep(10)
    }

    const blocks = new Map<number, BlockHistory>()
    // NBD does not order requests in flight together: of two overlapping writes in flight at
    // once either may land last. So a block may hold an older write X than its last flushed
    // write F only if X was still unacknowledged when F was issued.
    let event = 0
    const issuedAt = new Map<number, number>()
    const ackedAt = new Map<number, number>()
    const overlapped = (older: number, newer: number): boolean => (ackedAt.get(older) ?? Number.POSITIVE_INFINITY) > (issuedAt.get(newer) ?? 0)
    let nextWrite = 1
    let killsDuringRestore = 0
    let iterations = 0
    let flushes = 0
    let acked = 0
    const remaining: number[] = []
    while (killsDuringRestore < KILLS) {
      iterations++
      assert.ok(iterations <= KILLS * 3, `only ${killsDuringRestore} kills landed during the restore in ${iterations - 1} runs`)
      if (!served) {
        // serve resumes the restore at start, at this rate.
        served = await startServe(state, 't', ['--rate', String(RATE)])
      }
      if (process.env.DEBUG_TORTURE) console.log(`run ${iterations}`)
      const client = await NbdTestClient.connect(served.socket)
      // The writer: up to 8 writes in flight; now and then a FLUSH, which covers every write
      // acknowledged before it was sent.
      let stop = false
      const writer = (async () => {
        const inflight = new Set<Promise<void>>()
        while (!stop && !client.closed) {
          while (inflight.size < 8 && !stop && !client.closed) {
            if (rnd() < 0.05) {
              const covered = [...blocks.entries()].flatMap(([b, h]) => (h.writes.length ? [[b, h.writes.at(-1)!] as const] : [])).filter(([, id]) => ackedIds.has(id))
              const p = client.flush().then(() => {
                flushes++
                for (const [b, id] of covered) {
                  const h = blocks.get(b)!
                  if (id > h.flushed) h.flushed = id
                }
              })
              const q = p.catch(() => undefined).finally(() => inflight.delete(q))
              inflight.add(q)
              continue
            }
            const n = 1 + randInt(8)
            const first = HOT_FIRST + randInt(HOT / BLOCK - n)
            const id = nextWrite++
            issuedAt.set(id, event++)
            const data = Buffer.concat(Array.from({length: n}, (_, i) => stamped(id, first + i)))
            for (let i = 0; i < n; i++) {
              const h = blocks.get(first + i) ?? {flushed: 0, writes: []}
              h.writes.push(id)
              blocks.set(first + i, h)
            }
            const p = client.write(first * BLOCK, data, rnd() < 0.02).then(() => {
              acked++
              ackedIds.add(id)
              ackedAt.set(id, event++)
            })
            const q = p.catch(() => undefined).finally(() => inflight.delete(q))
            inflight.add(q)
          }
          await Promise.race(inflight)
        }
        await Promise.allSettled(inflight)
      })().catch(() => undefined)
      const ackedIds = new Set<number>()
      // Kill at a random moment.
      await sleep(50 + randInt(1200))
      if (process.env.DEBUG_TORTURE) console.log(`status ${iterations}`)
      const s = await controlRequest<{operation?: {remainingExtents?: number; state?: string}}>(control(), {op: 'status'}).catch(() => undefined)
      if (process.env.DEBUG_TORTURE) console.log(`kill ${iterations}`)
      if (s?.operation) {
        killsDuringRestore++
        remaining.push(s.operation.remainingExtents ?? -1)
      }
      await served.stop('SIGKILL')
      served = undefined
      stop = true
      await writer.catch(() => undefined)
      client.destroy()
      if (!s?.operation) break
    }
    const r = await restoreCmd
    assert.notEqual(r.code, 0, 'the first restore command lost its server')

    // Then: serve again, let the restore finish at full speed, stop cleanly.
    served = await startServe(state, 't')
    await controlRequest(control(), {op: 'rate', rate: 0}).catch(() => undefined)
    for (let i = 0; ; i++) {
      const s = await controlRequest<{operation?: unknown}>(control(), {op: 'status'})
      if (!s.operation) break
      assert.ok(i < 3000, 'the restore did not complete')
      await sleep(20)
    }
    const exit = await served.stop('SIGTERM')
    served = undefined
    assert.equal(exit.code, 0)
    const s = await clonectlOk(state, ['status', 't', '--json'])
    const st = (JSON.parse(s.stdout) as Array<{operation?: unknown; clones: Array<{state: string}>}>)[0]
    assert.equal(st.operation, undefined, 'no operation left')
    assert.equal(st.clones[0].state, 'fractured')

    console.log(
      `serveTorture: ${killsDuringRestore} SIGKILLs during the restore in ${iterations} runs (extents left at each kill: ${remaining.join(' ')}); ${nextWrite - 1} writes (${acked} acknowledged), ${flushes} flushes`,
    )
    assert.ok(killsDuringRestore >= KILLS, `${killsDuringRestore} kills during the restore`)
    assert.equal(await sha256File(cl), cloneSum, 'the clone is bit-identical')

    // Every block: flushed data intact (or a later write), else clone data or one of its writes.
    const final = await fsp.readFile(src)
    let flushedBlocks = 0
    const problems: string[] = []
    for (let b = 0; b < SIZE / BLOCK; b++) {
      const got = final.subarray(b * BLOCK, (b + 1) * BLOCK)
      const h = blocks.get(b)
      const isStamped = got.readUInt32BE(0) === MAGIC
      const id = isStamped ? got.readUInt32BE(4) : 0
      if (isStamped && !got.equals(stamped(id, b))) {
        problems.push(`block ${b}: a torn or misplaced write (id ${id})`)
        continue
      }
      if (!h) {
        if (!got.equals(cloneData.subarray(b * BLOCK, (b + 1) * BLOCK))) problems.push(`block ${b}: never written during the restore, yet not the clone's data`)
        continue
      }
      if (h.flushed) {
        flushedBlocks++
        if (!isStamped || (id < h.flushed && !overlapped(id, h.flushed)) || !h.writes.includes(id)) problems.push(`block ${b}: flushed write ${h.flushed} lost (holds ${isStamped ? `write ${id}` : 'unstamped data'})`)
      } else if (isStamped ? !h.writes.includes(id) : !got.equals(cloneData.subarray(b * BLOCK, (b + 1) * BLOCK))) {
        problems.push(`block ${b}: holds ${isStamped ? `write ${id}, never made to it` : 'neither the clone data nor a write'}`)
      }
      if (problems.length > 20) break
    }
    console.log(`serveTorture: ${blocks.size} blocks written, ${flushedBlocks} of them under a flush`)
    assert.deepEqual(problems, [])
    assert.ok(flushedBlocks > 0)
    void srcData
  })
})
