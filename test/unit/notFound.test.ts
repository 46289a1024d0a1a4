/**
 * A command line whose command oclif did not find (src/ui/notFound.ts): a usage error naming
 * the nearest command, as JSON when --json is anywhere before `--`; and a known command
 * typed after a leading flag (`clonectl --json status`) is that command, not a typo of it.
 */
import assert from 'node:assert/strict'
import {test} from 'node:test'
import {notFound} from '../../src/ui/notFound.js'

const ids = ['status', 'clone:add', 'clone:sync', 'group:create', 'drill']

test('given a mistyped command, then a usage error names the nearest command; --json after it or first asks for JSON', () => {
  for (const [id, argv, json] of [
    ['stauts', [], false],
    ['stauts', ['--json'], true],
    ['--json', ['stauts'], true],
    ['stauts', ['--', '--json'], false],
  ] as const) {
    const r = notFound(id, [...argv], ids)
    assert.ok('error' in r, `${id} ${argv.join(' ')}`)
    assert.equal(r.json, json, `${id} ${argv.join(' ')}`)
    assert.deepEqual(r.error, {status: 2, error: {code: 'USAGE', name: 'UsageError', message: 'stauts is not a clonectl command', fix: 'did you mean `clonectl status`? run `clonectl help` for the list of commands'}})
  }
})

test('given a topic and a mistyped command with arguments, after a leading flag, then only the command words are named', () => {
  const r = notFound('--json', ['clone', 'ad', 'db1', 'c', '--path', 'x'], ids)
  assert.ok('error' in r)
  assert.equal(r.json, true)
  assert.equal(r.error.error.message, 'clone ad is not a clonectl command')
  assert.match(r.error.error.fix ?? '', /`clonectl clone add`/)
})

test('given a known command after leading flags, then it is run with those flags (a global one with its value)', () => {
  assert.deepEqual(notFound('--json', ['status', 'db1'], ids), {run: {id: 'status', argv: ['--json', 'db1']}})
  assert.deepEqual(notFound('--state-dir', ['/x', '--json', 'clone', 'sync', 'db1', 'c'], ids), {run: {id: 'clone:sync', argv: ['--state-dir', '/x', '--json', 'db1', 'c']}})
})

test('given only flags, then the error says no command was given', () => {
  const r = notFound('--json', [], ids)
  assert.ok('error' in r)
  assert.equal(r.json, true)
  assert.equal(r.error.error.message, 'no clonectl command given')
})
