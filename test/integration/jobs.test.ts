/**
 * Issue 18 item 1: `clonectl job pause|resume|rate|cancel|list` reach a running sync or
 * restore from another process, whether it runs under `serve` or as a foreground command
 * (which listens on the group's job socket), and `status` shows a paused job and its rate.
 * Every wait is on state (job list, status, the command's exit), never on a delay.
 */
import assert from 'node:assert/strict'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {Cli, cmp, MiB, pwrite, randomImage, tempDir} from '../helpers/cli.js'
import {assertContract} from '../helpers/jsonContract.js'
import {NbdTestClient, type Served, startServe} from '../helpers/serve.js'
import {waitFor} from '../helpers/waitFor.js'

let dir: string
let cli: Cli

before(async () => {
  dir = await tempDir('jobs')
  cli = new Cli(join(dir, 'state'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

interface Setup {
  group: string
  source: string
  clone: string
}

/**
 * Given a group with a clone synced and fractured, and its source then changed outside
 * clonectl: the next sync or restore compares and copies all 8 MiB, so at 256 KiB/s it runs
 * for some 30 s unless re-rated: long enough to be caught running.
 */
async function setup(group: string): Promise<Setup> {
  const source = join(dir, `${group}-src.img`)
  const clone = join(dir, `${group}-c1.img`)
  await randomImage(source, 8 * MiB, 7)
  await cli.ok(['group', 'create', group, '--source', source])
  await cli.ok(['clone', 'add', group, 'c1', '--path', clone, '--create'])
  await cli.ok(['clone', 'fracture', group, 'c1'])
  await pwrite(source, 3 * MiB, Buffer.alloc(MiB, 0x5a))
  return {group, source, clone}
}

function startJob(kind: 'sync' | 'restore', group: string) {
  return cli.spawnBackground(kind === 'sync' ? ['clone', 'sync', group, 'c1', '--rate', '256K'] : ['restore', group, 'c1', '--rate', '256K', '--yes'])
}

async function jobs(group: string): Promise<Array<{kind: string; clone: string; state: string; rate?: number; runner: string; doneBytes: number}>> {
  const l = await cli.json(['job', 'list', group])
  assertContract('job:list', l)
  return l
}

for (const where of ['foreground', 'serve'] as const)
  for (const kind of ['sync', 'restore'] as const)
    describe(`a ${kind} run ${where === 'serve' ? 'under serve' : 'in the foreground (no serve)'}`, () => {
      test('job pause holds it (status shows paused, and no progress across two reads), job rate re-rates it, job resume lets it finish', async () => {
        const s = await setup(`p-${kind}-${where}`)
        const served: Served | undefined = where === 'serve' ? await startServe(cli.stateDir, s.group) : undefined
        try {
          const bg = startJob(kind, s.group)
          const [j] = await waitFor(async () => {
            const l = await jobs(s.group)
            return l.length === 1 && l[0]!.state === 'running' ? l : undefined
          }, `the ${kind} listed as running`)
          assert.equal(j!.kind, kind)
          assert.equal(j!.clone, 'c1')
          assert.equal(j!.runner, where)
          assert.equal(j!.rate, 256 * 1024)

          const paused = await cli.json(['job', 'pause', s.group])
          assertContract('job:pause', paused)
          assert.equal(paused.state, 'paused')
          const s1 = await waitFor(async () => {
            const st = await cli.status(s.group)
            return st.operation?.paused === true ? st : undefined
          }, 'status showing the job paused')
          assert.ok(s1.operation.remainingExtents > 0, 'paused before the end')
          const all = await cli.json(['status', s.group])
          assertContract('status', all)
          const s2 = Array.isArray(all) ? all[0] : all
          assert.equal(s2.operation.paused, true)
          assert.equal(s2.operation.remainingExtents, s1.operation.remainingExtents, 'no progress while paused')
          assert.equal(s2.operation.percentDone, s1.operation.percentDone)
          assert.match((await cli.ok(['status', s.group])).stdout, /PAUSED .*rate 256\.0 KiB\/s/)

          const rerated = await cli.json(['job', 'rate', s.group, '4M'])
          assertContract('job:rate', rerated)
          assert.equal(rerated.rate, 4 * MiB)
          assert.equal(rerated.state, 'paused', 're-rating does not resume')
          assert.equal((await cli.status(s.group)).operation.rate, 4 * MiB)

          const resumed = await cli.json(['job', 'resume', s.group])
          assertContract('job:resume', resumed)
          assert.equal(resumed.state, 'running')
          const r = await bg.done
          assert.equal(r.code, 0, r.stderr)
          assert.deepEqual(await jobs(s.group), [], 'no job left')
          const st = await cli.status(s.group)
          assert.equal(st.operation, undefined)
          assert.equal(st.clones[0].state, kind === 'sync' ? 'synchronized' : 'fractured')
          assert.ok(cmp(s.source, s.clone).same, 'source and clone are equal')
        } finally {
          await served?.stop()
        }
      })

      test(`job cancel stops it at a safe point and says so${kind === 'restore' ? '; the restore stays recorded and resumes' : '; the clone is out-of-sync'}`, async () => {
        const s = await setup(`c-${kind}-${where}`)
        const served: Served | undefined = where === 'serve' ? await startServe(cli.stateDir, s.group) : undefined
        try {
          const bg = startJob(kind, s.group)
          await waitFor(async () => (await jobs(s.group)).length === 1, `the ${kind} listed`)
          const c = await cli.json(['job', 'cancel', s.group])
          assertContract('job:cancel', c)
          assert.equal(c.state, 'cancelled')
          const r = await bg.done
          assert.equal(r.code, 130, r.stderr)
          assert.match(r.stderr, new RegExp(`cancelled by \`clonectl job cancel ${s.group}\``))
          assert.deepEqual(await jobs(s.group), [])
          const st = await cli.status(s.group)
          if (kind === 'sync') {
            assert.equal(st.operation, undefined)
            assert.equal(st.clones[0].state, 'out-of-sync')
          } else {
            assert.equal(st.operation.kind, 'restore')
            assert.equal(st.operation.state, 'interrupted', 'recorded, nothing copying it')
            assert.match((await cli.ok(['status', s.group])).stdout, /INTERRUPTED/)
            await cli.ok(['restore', s.group, '--yes'])
            assert.ok(cmp(s.source, s.clone).same, 'the resumed restore completed')
          }
          const nothing = await cli.run(['job', 'pause', s.group])
          assert.equal(nothing.code, 6, 'nothing to pause: a state error')
          assert.match(nothing.stderr, /has no sync or restore running to pause/)
        } finally {
          await served?.stop()
        }
      })
    })

describe('a restore paused under serve', () => {
  test('hosts keep reading through the export: what they read not yet restored is copied on demand, and the job stays paused', async () => {
    const s = await setup('host-paused')
    const served = await startServe(cli.stateDir, s.group)
    let client: NbdTestClient | undefined
    try {
      const bg = startJob('restore', s.group)
      await waitFor(async () => (await jobs(s.group)).length === 1, 'the restore listed')
      assert.equal((await cli.json(['job', 'pause', s.group])).state, 'paused')
      // Attached after the switch: it sees the restore, never the pre-restore source.
      client = await NbdTestClient.connect(served.socket)
      const want = (await fsp.readFile(s.clone)).subarray(3 * MiB, 4 * MiB)
      const got = await client.read(3 * MiB, MiB)
      assert.ok(got.equals(want), 'the host reads the clone where the source was damaged')
      const [j] = await jobs(s.group)
      assert.equal(j!.state, 'paused', 'host I/O does not resume the job')
      await client.disconnect()
      client = undefined
      await cli.json(['job', 'rate', s.group, '0'])
      await cli.json(['job', 'resume', s.group])
      const r = await bg.done
      assert.equal(r.code, 0, r.stderr)
      assert.ok(cmp(s.source, s.clone).same, 'the restore completed')
    } finally {
      client?.destroy()
      await served.stop()
    }
  })
})

describe('job commands with nothing to act on, and a paused foreground job', () => {
  test('given no job running, then job pause, resume, rate and cancel each exit 6 naming the group; given a running job, job resume succeeds and changes nothing', async () => {
    const s = await setup('idle')
    for (const args of [['pause'], ['resume'], ['rate', '1M'], ['cancel']]) {
      const r = await cli.run(['job', args[0]!, s.group, ...args.slice(1)])
      assert.equal(r.code, 6, `job ${args.join(' ')}: ${r.stderr}`)
      assert.match(r.stderr, new RegExp(`group ${s.group} has no sync or restore running to ${args[0]}`))
    }
    const bg = startJob('sync', s.group)
    try {
      await waitFor(async () => (await jobs(s.group))[0]?.state === 'running', 'the sync listed as running')
      const resumed = await cli.json(['job', 'resume', s.group])
      assertContract('job:resume', resumed)
      assert.equal(resumed.state, 'running', 'resuming a running job leaves it running')
      assert.equal(resumed.rate, 256 * 1024, 'and its rate as it was')
    } finally {
      await cli.run(['job', 'rate', s.group, '0'])
    }
    const r = await bg.done
    assert.equal(r.code, 0, r.stderr)
    assert.ok(cmp(s.source, s.clone).same)
  })

  test('given a foreground sync paused with job pause, when Ctrl-C (SIGINT) reaches it, then it stops (exit 130), the clone out-of-sync with its map intact, and the next sync finishes it', async () => {
    const s = await setup('ctrlc')
    const bg = startJob('sync', s.group)
    await waitFor(async () => (await jobs(s.group))[0]?.state === 'running', 'the sync listed as running')
    assert.equal((await cli.json(['job', 'pause', s.group])).state, 'paused')
    bg.kill('SIGINT')
    const r = await bg.done
    assert.equal(r.code, 130, `exit ${r.code} signal ${r.signal}: ${r.stderr}`)
    const st = await cli.status(s.group)
    assert.equal(st.operation, undefined)
    assert.equal(st.clones[0].state, 'out-of-sync')
    assert.ok(st.clones[0].dirtyExtents > 0, 'what is left is still marked')
    await cli.ok(['clone', 'sync', s.group, 'c1'])
    assert.ok(cmp(s.source, s.clone).same)
  })
})
