/**
 * The --json output of every command is a published contract (schemas/*.schema.json, from
 * src/ui/results/schemas.ts), checked here as salesforcecli/plugin-org checks its commands:
 * each command that takes --json is run through bin/ (offline and, where a server can carry it
 * out, under `serve`), and its stdout is validated with ajv against its schema, whose objects
 * are closed, so an internal field that leaks (group.json's fingerprint, inode, mtime or
 * session marker; a server's internals) fails. Failures print the error object of
 * schemas/error.schema.json, oclif's own usage errors included. And --json never stands for
 * --yes: a destructive command under --json without --yes is refused (exit 2) and changes nothing.
 */
import assert from 'node:assert/strict'
import {readdirSync, readFileSync} from 'node:fs'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {COMMANDS} from '../../commands/index.js'
import {schemaDocuments, type JsonSchema} from '../../src/ui/results/schemas.js'
import {Cli, type CliResult, MiB, pwrite, randomImage, repoRoot, sha256, tempDir} from '../helpers/cli.js'
import {assertContract, assertJsonError, check, validatorOf} from '../helpers/jsonContract.js'
import {startServe} from '../helpers/serve.js'
import {waitFor} from '../helpers/waitFor.js'

let dir: string
let cli: Cli

before(async () => {
  dir = await tempDir('json')
  cli = new Cli(join(dir, 'state'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

/** Run `clonectl ARGS --json`, expect exit 0, validate stdout against command `id`'s schema. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the parsed JSON, read field by field after the schema passed
async function contract(id: string, args: string[]): Promise<any> {
  const r = await cli.ok([...args, '--json'])
  assert.ok(r.json !== undefined, `clonectl ${args.join(' ')} --json printed JSON: ${r.stdout}`)
  assertContract(id, r.json)
  return r.json
}

async function group(name: string, size = 8 * MiB): Promise<{src: string; path: (c: string) => string}> {
  const src = join(dir, `${name}-src.img`)
  await randomImage(src, size, name.length + 7)
  await cli.ok(['group', 'create', name, '--source', src, '--extent-size', '64K'])
  return {src, path: (c) => join(dir, `${name}-${c}.img`)}
}

/** Every object node of a schema, with where it is. */
function* objects(s: unknown, at = '#'): Generator<[string, Record<string, unknown>]> {
  if (Array.isArray(s)) for (const [i, x] of s.entries()) yield* objects(x, `${at}/${i}`)
  else if (s && typeof s === 'object') {
    const o = s as Record<string, unknown>
    if (o.type === 'object') yield [at, o]
    for (const [k, v] of Object.entries(o)) yield* objects(v, `${at}/${k}`)
  }
}

describe('the schemas', () => {
  test('every command that takes --json has a schema (and no schema names a command that does not); each compiles in strict mode', () => {
    const withJson = Object.entries(COMMANDS)
      .filter(([, c]) => (c as {enableJsonFlag?: boolean}).enableJsonFlag)
      .map(([id]) => id)
      .sort()
    const docs = schemaDocuments()
    const schemaIds = Object.keys(docs)
      .filter((f) => f !== 'error.schema.json')
      .map((f) => f.replace(/\.schema\.json$/, ''))
      .sort()
    assert.deepEqual(schemaIds, withJson.map((id) => id.replace(/:/g, '-')))
    assert.ok(!withJson.includes('serve'), 'serve prints no result (it runs until stopped)')
    for (const id of [...withJson, 'error']) validatorOf(id)
  })

  test('every object in every schema is closed (additionalProperties: false)', () => {
    for (const [file, doc] of Object.entries(schemaDocuments())) {
      const found = [...objects(doc)]
      assert.ok(found.length > 0, `${file} has objects`)
      for (const [at, o] of found) assert.equal(o.additionalProperties, false, `${file} ${at} is closed`)
    }
  })

  test('schemas/ in the package holds exactly what the build writes (npm run build regenerates it)', () => {
    const dirPath = join(repoRoot, 'schemas')
    const want = schemaDocuments()
    assert.deepEqual(readdirSync(dirPath).sort(), Object.keys(want).sort())
    for (const [file, doc] of Object.entries(want)) assert.deepEqual(JSON.parse(readFileSync(join(dirPath, file), 'utf8')) as JsonSchema, doc, `schemas/${file} is current`)
  })

  test('given group.json as it is on disk, then the group create schema rejects it: the on-disk record is not the result', async () => {
    const {src} = await group('ondisk', 1 * MiB)
    const record = JSON.parse(await fsp.readFile(join(cli.stateDir, 'groups', 'ondisk', 'group.json'), 'utf8')) as Record<string, unknown>
    const why = check('group:create', record)
    assert.ok(why, 'rejected')
    assert.match(why, /must NOT have additional properties/)
    const created = (await cli.json(['status', 'ondisk']))[0]
    assert.equal(created.source.path, src)
  })
})

describe('every command under --json prints what its schema says', () => {
  test('offline: group create/list/destroy, clone add/sync/fracture/remove, status, verify, restore', async () => {
    const src = join(dir, 'life-src.img')
    await randomImage(src, 8 * MiB, 11)
    const created = await contract('group:create', ['group', 'create', 'life', '--source', src, '--extent-size', '64K'])
    assert.deepEqual(created.source, {path: src, kind: 'file', size: 8 * MiB})
    const added = await contract('clone:add', ['clone', 'add', 'life', 'c', '--path', join(dir, 'life-c.img'), '--create'])
    assert.equal(added.clone.state, 'synchronized')
    assert.equal(added.sync.completed, true)
    const addedOnly = await contract('clone:add', ['clone', 'add', 'life', 'd', '--path', join(dir, 'life-d.img'), '--create', '--no-sync'])
    assert.equal(addedOnly.sync, undefined)
    assert.equal(addedOnly.clone.state, 'out-of-sync')
    const synced = await contract('clone:sync', ['clone', 'sync', 'life', 'd'])
    assert.equal(synced.completed, true)
    assert.equal(typeof synced.operationId, 'string')
    const again = await contract('clone:sync', ['clone', 'sync', 'life', 'd'])
    assert.equal(again.alreadySynchronized, true)
    assert.equal(again.operationId, undefined, 'no operation ran')
    const fractured = await contract('clone:fracture', ['clone', 'fracture', 'life', 'c', 'd'])
    assert.deepEqual(fractured.map((f: {alreadyFractured: boolean}) => f.alreadyFractured), [false, false])
    assert.equal((await contract('clone:fracture', ['clone', 'fracture', 'life', 'c']))[0].alreadyFractured, true)
    // Host-visible change to the source (behind clonectl: the restore compares every extent).
    await pwrite(src, 3 * MiB, Buffer.alloc(MiB, 0x5a))
    await contract('verify', ['verify', 'life', 'd', '--repair'])
    const v = await contract('verify', ['verify', 'life', 'd'])
    assert.equal(v.markedDifferent, 16)
    const st = await contract('status', ['status'])
    assert.deepEqual(st.map((g: {name: string}) => g.name).filter((n: string) => n === 'life'), ['life'])
    await contract('status', ['status', 'life'])
    await contract('group:list', ['group', 'list'])
    const restored = await contract('restore', ['restore', 'life', 'c', '--yes'])
    assert.equal(restored.completed, true)
    assert.equal(await sha256(src), await sha256(join(dir, 'life-c.img')))
    const removed = await contract('clone:remove', ['clone', 'remove', 'life', 'd', '--yes'])
    assert.deepEqual(removed, {clone: 'd', path: join(dir, 'life-d.img')})
    const destroyed = await contract('group:destroy', ['group', 'destroy', 'life', '--force', '--yes'])
    assert.deepEqual(destroyed, {group: 'life', clones: 1})
  })

  test('a damaged group: status and group list show it by its own shape; group destroy --force removes it', async () => {
    await group('dmg', 1 * MiB)
    await fsp.writeFile(join(cli.stateDir, 'groups', 'dmg', 'group.json'), '{"formatVersion": 1, "name": ')
    const st = await contract('status', ['status'])
    const d = st.find((g: {name: string}) => g.name === 'dmg')
    assert.equal(d.damaged.code, 'CORRUPT_STATE')
    const list = await contract('group:list', ['group', 'list'])
    assert.ok(list.find((g: {name: string; damaged?: unknown}) => g.name === 'dmg' && g.damaged))
    await contract('group:destroy', ['group', 'destroy', 'dmg', '--force', '--yes'])
  })

  test('under serve: status with the server and its running operation, clone add/sync/fracture/remove and verify carried out by the server; an interrupted request is an error object', async () => {
    const {path} = await group('srv')
    await cli.ok(['clone', 'add', 'srv', 'c', '--path', path('c'), '--create'])
    const served = await startServe(cli.stateDir, 'srv')
    try {
      const s = (await contract('status', ['status', 'srv']))[0]
      assert.equal(s.server.pid, served.proc.pid, 'status came from the server')
      await contract('clone:add', ['clone', 'add', 'srv', 'd', '--path', path('d'), '--create', '--no-sync'])
      await contract('clone:sync', ['clone', 'sync', 'srv', 'd'])
      await contract('clone:fracture', ['clone', 'fracture', 'srv', 'c'])
      await contract('verify', ['verify', 'srv', 'c'])
      await contract('clone:remove', ['clone', 'remove', 'srv', 'd', '--yes'])
      // A long sync (8 MiB at 256 KiB/s): status shows it both as the recorded operation and live.
      await cli.ok(['clone', 'add', 'srv', 'e', '--path', path('e'), '--create', '--no-sync'])
      const bg = cli.spawnBackground(['clone', 'sync', 'srv', 'e', '--rate', '256K', '--json'])
      const running = await waitFor(async () => {
        const r = await cli.json(['status', 'srv'])
        // The server runs the job before its record is saved: wait for both to show.
        return r[0].server?.operation && r[0].operation ? r : undefined
      }, 'the sync to show in status, live and recorded')
      assertContract('status', running)
      assert.equal(running[0].operation.state, 'running')
      assert.equal(running[0].server.operation.clone, 'e')
      assert.equal(running[0].server.operation.rate, 256 * 1024)
      bg.kill('SIGINT')
      const r: CliResult = await bg.done
      const j = assertJsonError(r, 130, 'INTERRUPTED')
      assert.match(j.error.message, /sync/)
    } finally {
      await served.stop()
    }
    const after = (await contract('status', ['status', 'srv']))[0]
    assert.equal(after.server, undefined)
  })

  test('drill (self-contained, the smallest size)', async () => {
    const r = await cli.ok(['drill', '--size', '16M', '--json'], 0, {env: {TMPDIR: dir}})
    assertContract('drill', r.json)
    assert.equal(r.json.ok, true)
  })
})

describe('failures under --json print the error object', () => {
  test("clonectl's own errors, oclif's usage errors (unknown flag, missing argument) and a bad flag value", async () => {
    await group('err', 1 * MiB)
    let j = assertJsonError(await cli.run(['clone', 'sync', 'err', 'nope', '--json']), 3, 'NOT_FOUND')
    assert.match(j.error.message, /nope/)
    j = assertJsonError(await cli.run(['clone', 'sync', 'err', 'c', '--bogus', '--json']), 2, 'USAGE')
    assert.match(j.error.message, /--bogus/)
    assert.match(j.error.fix ?? '', /`clonectl clone sync --help`/)
    j = assertJsonError(await cli.run(['clone', 'add', 'err', '--json']), 2, 'USAGE')
    assert.match(j.error.message, /Missing 1 required arg/)
    assert.doesNotMatch(j.error.message, /\n/, 'one line')
    j = assertJsonError(await cli.run(['clone', 'sync', 'err', 'c', '--wait=soon', '--json']), 2, 'USAGE')
    assert.match(j.error.message, /--wait/)
  })

  test('a mistyped command with --json, before or after it: the error object naming the nearest command, exit 2, nothing on stderr but what the error says', async () => {
    for (const args of [
      ['stauts', '--json'],
      ['--json', 'stauts'],
      ['--json', 'clone', 'ad', 'g', 'c'],
    ]) {
      const r = await cli.run(args)
      const j = assertJsonError(r, 2, 'USAGE')
      assert.match(j.error.message, /^(stauts|clone ad) is not a clonectl command$/, args.join(' '))
      assert.match(j.error.fix ?? '', /did you mean `clonectl (status|clone add)`\?/, args.join(' '))
      assert.equal(r.stderr, '', `${args.join(' ')}: the error is on stdout only`)
    }
    // A known command after --json is that command, not a typo of it.
    const st = await cli.ok(['--json', 'status'])
    assertContract('status', st.json)
  })

  test('a drill that fails a check: the error object (exit 10) carries its report, with the check that failed', async () => {
    const {path} = await group('dfail')
    await cli.ok(['clone', 'add', 'dfail', 'c', '--path', path('c'), '--create'])
    await cli.ok(['clone', 'fracture', 'dfail', 'c'])
    const r = await cli.run(['drill', 'dfail', 'c', '--target', path('target'), '--exec', 'echo checked {} >&2; exit 3', '--json'])
    const j = assertJsonError(r, 10, 'DRILL_FAILED') as ReturnType<typeof assertJsonError> & {result?: {ok: boolean; kind: string; checks: Array<{name: string; ok: boolean; detail: string}>}}
    assert.match(j.error.message, /exec: echo checked/)
    assert.ok(j.result, 'the report is in the error object')
    assert.equal(j.result.ok, false)
    assert.equal(j.result.kind, 'group')
    const failed = j.result.checks.filter((c) => !c.ok)
    assert.equal(failed.length, 1, JSON.stringify(j.result.checks))
    assert.match(failed[0]!.name, /^exec: echo checked/)
    assert.match(failed[0]!.detail, /^exit 3: checked /)
    assert.ok(j.result.checks.some((c) => c.ok && c.name === 'target equals the clone'), 'the checks that passed are reported too')
    // A failure with no report of its own has no result.
    const nf = assertJsonError(await cli.run(['drill', 'dfail', 'nope', '--target', path('t2'), '--json']), 3, 'NOT_FOUND') as {result?: unknown}
    assert.equal(nf.result, undefined)
  })
})

describe('--json never stands for --yes', () => {
  test('given a group with a fractured clone; when group destroy, clone remove and restore run with --json but no --yes; then each exits 2 naming --yes, and nothing changed', async () => {
    const {src, path} = await group('yes')
    await cli.ok(['clone', 'add', 'yes', 'c', '--path', path('c'), '--create'])
    await cli.ok(['clone', 'fracture', 'yes', 'c'])
    await pwrite(src, 0, Buffer.alloc(MiB, 0x77))
    const before = await sha256(src)
    for (const args of [
      ['group', 'destroy', 'yes', '--force'],
      ['clone', 'remove', 'yes', 'c'],
      ['restore', 'yes', 'c'],
    ]) {
      const j = assertJsonError(await cli.run([...args, '--json']), 2, 'USAGE')
      assert.match(j.error.message, /--json needs --yes/, args.join(' '))
      assert.match(j.error.fix ?? '', /--yes/)
    }
    const s = await cli.status('yes')
    assert.deepEqual(s.clones.map((c: {name: string}) => c.name), ['c'], 'the clone is still there')
    assert.equal(s.operation, undefined, 'no restore was recorded')
    assert.equal(await sha256(src), before, 'the source was not overwritten')
    // With --yes each goes ahead.
    await contract('restore', ['restore', 'yes', 'c', '--yes'])
    await contract('clone:remove', ['clone', 'remove', 'yes', 'c', '--yes'])
    await contract('group:destroy', ['group', 'destroy', 'yes', '--yes'])
  })

  test('a restore being resumed asks nothing (it was confirmed when it started), under --json too', async () => {
    const {src, path} = await group('res')
    await cli.ok(['clone', 'add', 'res', 'c', '--path', path('c'), '--create'])
    await cli.ok(['clone', 'fracture', 'res', 'c'])
    await fsp.writeFile(src, Buffer.alloc(8 * MiB, 0xee))
    const bg = cli.spawnBackground(['restore', 'res', 'c', '--yes', '--rate', '256K'])
    await bg.until(async () => (await cli.status('res')).operation?.kind === 'restore', 'the restore is recorded')
    bg.kill('SIGKILL')
    await bg.done
    const interrupted = await contract('status', ['status', 'res'])
    assert.equal(interrupted[0].operation.state, 'interrupted')
    const out = await contract('restore', ['restore', 'res'])
    assert.equal(out.resumed, true)
    assert.equal(await sha256(src), await sha256(path('c')))
  })
})
