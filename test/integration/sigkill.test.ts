/**
 * Real process crashes (DESIGN §7): `clone sync` and a protected `restore` killed with
 * SIGKILL at random moments, then resumed by the next invocation; SIGINT stopping a sync at
 * a safe point (exit 130). Every run ends with cmp and, for the restore, the clone's sha256
 * unchanged. A SIGKILL is a process crash (the page cache survives); power loss is what the
 * simulated crash tests are for.
 *
 * Kill moments are random (printed, so a failure can be replayed) but measured from the
 * moment the operation is recorded in group.json, so each kill interrupts real copying.
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {after, before, describe, test} from 'node:test'
import type {GroupRecord} from '../../src/store/GroupRecord.js'
import {Cli, cmp, MiB, randomImage, sha256, tempDir, type Background} from '../helpers/cli.js'

let dir: string
let cli: Cli
before(async () => {
  dir = await tempDir('sigkill')
  cli = new Cli(join(dir, 'state'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

const randomMs = (lo: number, hi: number): number => lo + Math.floor(Math.random() * (hi - lo + 1))

async function groupJson(group: string): Promise<GroupRecord | undefined> {
  try {
    return JSON.parse(await fsp.readFile(join(cli.stateDir, 'groups', group, 'group.json'), 'utf8'))
  } catch {
    return undefined
  }
}

/** Wait until the background command has recorded its operation (it is copying), then a random delay, then kill it. */
async function killDuringOperation(bg: Background, group: string, kind: 'sync' | 'restore', sig: NodeJS.Signals, delayMs: number): Promise<void> {
  await bg.until(async () => (await groupJson(group))?.operation?.kind === kind && (await groupJson(group))?.operation?.pid === bg.pid, `the ${kind} to start`)
  await sleep(delayMs)
  bg.kill(sig)
}

describe('SIGKILL and SIGINT during clone sync', () => {
  test('sync killed with SIGKILL several times, then one sync copies only what is left; cmp identical', async () => {
    const src = join(dir, 'ks-src.img')
    const clone = join(dir, 'ks-c.img')
    await randomImage(src, 128 * MiB, 21)
    await cli.ok(['group', 'create', 'ks', '--source', src])
    await cli.ok(['clone', 'add', 'ks', 'c', '--path', clone, '--create', '--no-sync'])
    const total = 128 * MiB / (64 * 1024)
    let dirty = total
    for (let i = 0; i < 3; i++) {
      // Random in 200–1500 ms; the last one late enough to pass the engine's 1 s checkpoint.
      const delay = i === 2 ? randomMs(1200, 1500) : randomMs(200, 1500)
      const bg = cli.spawnBackground(['clone', 'sync', 'ks', 'c', '--rate', '20M'])
      await killDuringOperation(bg, 'ks', 'sync', 'SIGKILL', delay)
      const r = await bg.done
      assert.equal(r.signal, 'SIGKILL', `run ${i} (kill after ${delay} ms) should have been killed; exit ${r.code} ${r.stderr}`)
      const s = await cli.status('ks')
      const c = s.clones[0]
      assert.equal(c.state, 'out-of-sync', `after kill ${i} (${delay} ms): ${JSON.stringify(s)}`)
      assert.ok(c.dirtyExtents <= dirty, `dirty extents never grow: ${c.dirtyExtents} after ${dirty}`)
      assert.ok(c.dirtyExtents > 0, 'the kill came before the end')
      dirty = c.dirtyExtents
    }
    assert.ok(dirty < total, `some progress was durable before the kills (${dirty} of ${total} left)`)
    const out = await cli.json(['clone', 'sync', 'ks', 'c'])
    assert.equal(out.completed, true)
    assert.equal(out.compared, false, 'a killed sync is resumed from its map, not compared')
    assert.equal(out.totalExtents, dirty, 'the resumed sync copies only what status said was left')
    assert.ok(out.copiedBytes <= dirty * 64 * 1024)
    assert.ok(cmp(src, clone).same, 'identical after the resumed sync')
    const s = await cli.status('ks')
    assert.equal(s.clones[0].state, 'synchronized')
    assert.equal(s.clones[0].dirtyExtents, 0)
    assert.equal(s.operation, undefined)
  })

  for (const [sig, g] of [
    ['SIGINT', 'int'],
    ['SIGTERM', 'term'],
  ] as const)
    test(`${sig} during a sync: exit 130, the clone out-of-sync with its map intact, the next sync finishes it`, async () => {
    const src = join(dir, `${g}-src.img`)
    const clone = join(dir, `${g}-c.img`)
    await randomImage(src, 64 * MiB, 22)
    await cli.ok(['group', 'create', g, '--source', src])
    await cli.ok(['clone', 'add', g, 'c', '--path', clone, '--create', '--no-sync'])
    const bg = cli.spawnBackground(['clone', 'sync', g, 'c', '--rate', '20M'])
    await killDuringOperation(bg, g, 'sync', sig, randomMs(200, 1500))
    const r = await bg.done
    assert.equal(r.code, 130, `exit ${r.code} signal ${r.signal}; stderr: ${r.stderr}`)
    assert.match(r.stderr, /interrupted/)
    assert.match(r.stderr, new RegExp(`clone sync ${g} c`), 'says how to go on')
    const s = await cli.status(g)
    assert.equal(s.clones[0].state, 'out-of-sync')
    assert.equal(s.operation, undefined, 'a clean stop leaves no operation behind')
    assert.equal(s.lockedBy, undefined, 'and no lock')
    const left = s.clones[0].dirtyExtents
    assert.ok(left > 0 && left < 1024, `map intact with progress: ${left} of 1024 left`)
    const out = await cli.json(['clone', 'sync', g, 'c'])
    assert.equal(out.totalExtents, left)
    assert.ok(cmp(src, clone).same)
  })
})

describe('SIGKILL during a protected restore', () => {
  test('restore killed with SIGKILL ≥ 10 times, resumed with `restore G` each time: source == clone, clone unchanged', async () => {
    const src = join(dir, 'kr-src.img')
    const clone = join(dir, 'kr-c.img')
    await randomImage(src, 256 * MiB, 31)
    await cli.ok(['group', 'create', 'kr', '--source', src])
    await cli.ok(['clone', 'add', 'kr', 'c', '--path', clone, '--create'])
    await cli.ok(['clone', 'fracture', 'kr', 'c'])
    const cloneSha = await sha256(clone)
    // Damage most of the source behind clonectl's back: the restore compares every extent.
    const fh = await fsp.open(src, 'r+')
    const junk = randomBytes(MiB)
    for (let off = 0; off < 256 * MiB; off += 2 * MiB) await fh.write(junk, 0, junk.length, off)
    await fh.close()
    assert.equal(cmp(src, clone).same, false)

    const kills: string[] = []
    const initial = 4096
    let remaining = initial
    const refusals: Array<[string[], RegExp]> = [
      [['clone', 'sync', 'kr', 'c'], /clonectl restore kr/],
      [['clone', 'fracture', 'kr', 'c'], /clonectl restore kr/],
      [['clone', 'remove', 'kr', 'c', '--yes'], /clonectl restore kr/],
    ]
    const holderFile = join(cli.stateDir, 'groups', 'kr', 'lock.holder.json')
    const holds = async (pid: number): Promise<boolean> => {
      try {
        return JSON.parse(await fsp.readFile(holderFile, 'utf8')).pid === pid
      } catch {
        return false
      }
    }
    for (let i = 0; i < 10; i++) {
      // Random moments: from the operation's start (first run), from the lock's acquisition
      // (even runs; two of them late enough to pass a checkpoint), or from the spawn itself
      // (odd runs: the kill may land during start-up, opening or recovery).
      const delay = i === 2 || i === 6 ? randomMs(1200, 1500) : randomMs(200, 1500)
      const args = i === 0 ? ['restore', 'kr', 'c', '--yes', '--rate', '10M'] : ['restore', 'kr', '--yes', '--rate', '10M']
      const bg = cli.spawnBackground(args)
      if (i === 0) {
        kills.push(`op+${delay}`)
        await killDuringOperation(bg, 'kr', 'restore', 'SIGKILL', delay)
      } else if (i % 2 === 0) {
        kills.push(`lock+${delay}`)
        await bg.until(() => holds(bg.pid), 'the resumed restore to take the lock')
        await sleep(delay)
        bg.kill('SIGKILL')
      } else {
        kills.push(`spawn+${delay}`)
        await sleep(delay)
        bg.kill('SIGKILL')
      }
      const r = await bg.done
      assert.equal(r.signal, 'SIGKILL', `kill ${i} came too late: exit ${r.code}; ${r.stderr}; kills ${kills.join(',')}`)
      const s = await cli.status('kr')
      assert.equal(s.operation?.kind, 'restore', `after kill ${i}: ${JSON.stringify(s)}`)
      assert.equal(s.operation.state, 'interrupted')
      assert.equal(s.operation.protected, true)
      assert.equal(s.operation.clone, 'c')
      assert.ok(s.operation.remainingExtents <= remaining, `remaining never grows: ${s.operation.remainingExtents} after ${remaining} (kills ${kills.join(',')})`)
      remaining = s.operation.remainingExtents
      assert.equal(s.clones[0].state, 'restoring')
      if (i < refusals.length) {
        const [cmdArgs, fix] = refusals[i]
        const ref = await cli.run(cmdArgs)
        assert.equal(ref.code, 6, `${cmdArgs.join(' ')} during an interrupted restore: exit ${ref.code}; ${ref.stderr}`)
        assert.match(ref.stderr, fix, `${cmdArgs.join(' ')} says how to resume`)
      }
    }
    assert.ok(remaining < initial, `durable progress across the kills (${remaining} of ${initial} left; kills ${kills.join(', ')})`)
    const out = await cli.json(['restore', 'kr', '--yes'])
    assert.equal(out.resumed, true)
    assert.equal(out.protected, true)
    assert.ok(cmp(src, clone).same, `source == clone after ${kills.length} kills at ${kills.join(', ')} ms`)
    assert.equal(await sha256(clone), cloneSha, 'the clone is bit-identical to before')
    const s = await cli.status('kr')
    assert.equal(s.operation, undefined)
    assert.equal(s.clones[0].state, 'fractured')
    assert.equal(s.clones[0].dirtyExtents, 0)
  })
})
