package org.edge.plan;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.function.Consumer;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/** Cross-language parity: the vectors the Python side wrote (export/vectors.py) replayed through this
 * interpreter. Every method call must be the one the Python driver made, with the same arrays; the
 * recorded outputs are handed back; the final outputs must be the Python driver's. Then malformed
 * plans must fail with one clear line. No test framework (none is reachable here): a main that exits
 * 1 on the first failure, run by tests/test_android_demo.py.
 *
 *   java -cp build org.edge.plan.VectorsTest VECTOR_DIR
 */
public final class VectorsTest {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    @SuppressWarnings("unchecked")
    static Tensor tensor(Object o) {
        Map<String, Object> m = (Map<String, Object>) o;
        List<Object> shape = (List<Object>) m.get("shape"), data = (List<Object>) m.get("data");
        long[] dims = new long[shape.size()];
        for (int i = 0; i < dims.length; i++) dims[i] = ((Double) shape.get(i)).longValue();
        switch ((String) m.get("dtype")) {
            case "float32": {
                float[] f = new float[data.size()];
                for (int i = 0; i < f.length; i++) f[i] = ((Double) data.get(i)).floatValue();
                return Tensor.of(f, dims);
            }
            case "int64": {
                long[] l = new long[data.size()];
                for (int i = 0; i < l.length; i++) l[i] = ((Double) data.get(i)).longValue();
                return Tensor.of(l, dims);
            }
            default: {
                boolean[] b = new boolean[data.size()];
                for (int i = 0; i < b.length; i++) b[i] = (Boolean) data.get(i);
                return Tensor.of(b, dims);
            }
        }
    }

    /** The program as the Python driver saw it: each call must be the next recorded one. */
    static final class Replay implements Driver.Methods {
        final Deque<Map<String, Object>> calls;
        final String name;

        @SuppressWarnings("unchecked")
        Replay(List<Object> calls, String name) {
            this.calls = new ArrayDeque<>();
            for (Object c : calls) this.calls.add((Map<String, Object>) c);
            this.name = name;
        }

        @SuppressWarnings("unchecked")
        public Tensor[] call(String method, Tensor[] inputs) {
            Map<String, Object> want = calls.poll();
            check(want != null, name + ": Java called " + method + " after the Python driver had stopped");
            check(method.equals(want.get("method")), name + ": Java called " + method + ", Python " + want.get("method"));
            List<Object> ins = (List<Object>) want.get("inputs");
            check(ins.size() == inputs.length, name + ": " + method + " got " + inputs.length + " inputs");
            for (int i = 0; i < inputs.length; i++)
                check(inputs[i].sameAs(tensor(ins.get(i))), name + ": input " + i + " of " + method + " differs (" + inputs[i] + ")");
            List<Object> outs = (List<Object>) want.get("outputs");
            Tensor[] out = new Tensor[outs.size()];
            for (int i = 0; i < out.length; i++) out[i] = tensor(outs.get(i));
            return out;
        }
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> copy(Object plan) {
        return (Map<String, Object>) Json.parse(toJson(plan));
    }

    @SuppressWarnings("unchecked")
    static String toJson(Object o) {
        if (o == null) return "null";
        if (o instanceof String) return "\"" + ((String) o).replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
        if (o instanceof Map) {
            return ((Map<String, Object>) o).entrySet().stream().map(e -> toJson(e.getKey()) + ":" + toJson(e.getValue()))
                    .collect(Collectors.joining(",", "{", "}"));
        }
        if (o instanceof List) return ((List<Object>) o).stream().map(VectorsTest::toJson).collect(Collectors.joining(",", "[", "]"));
        return String.valueOf(o);
    }

    static void malformed(Object good, Consumer<Map<String, Object>> change, String needle) {
        Map<String, Object> p = copy(good);
        change.accept(p);
        try {
            Plan.of(p);
        } catch (PlanException e) {
            check(e.getMessage().contains(needle) && !e.getMessage().contains("\n"), "expected one line with '" + needle + "', got: " + e.getMessage());
            return;
        }
        throw new AssertionError("a malformed plan was accepted (" + needle + ")");
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> at(Map<String, Object> m, String... path) {
        for (String k : path) m = (Map<String, Object>) m.get(k);
        return m;
    }

    @SuppressWarnings("unchecked")
    static List<Object> segments(Map<String, Object> p) {
        return (List<Object>) at(p, "routed").get("segments");
    }

    /** The then of the plan's first moe decision. */
    @SuppressWarnings("unchecked")
    static Map<String, Object> moeThen(Map<String, Object> p) {
        for (Object seg : segments(p)) {
            Map<String, Object> then = at((Map<String, Object>) seg, "then");
            if ("moe".equals(then.get("kind"))) return then;
        }
        throw new AssertionError("the plan has no moe decision");
    }

    static Map<String, Tensor> inputsFor(Plan plan) {
        Map<String, Tensor> in = new LinkedHashMap<>();
        for (String name : plan.inputs) in.put(name, Tensor.of(new long[] {1, 2}, 1, 2));
        return in;
    }

    @SuppressWarnings("unchecked")
    public static void main(String[] args) throws IOException {
        List<Path> files;
        try (Stream<Path> s = Files.list(Paths.get(args[0]))) {
            files = s.filter(f -> f.getFileName().toString().endsWith(".json")).sorted().collect(Collectors.toList());
        }
        int exits = 0, skips = 0, calls = 0, moes = 0;
        TreeSet<Long> kSeen = new TreeSet<>(), masksSeen = new TreeSet<>(); // ACM learners run; MoE experts as bit masks
        Object anyPlan = null, moePlan = null;
        for (Path f : files) {
            Map<String, Object> v = (Map<String, Object>) Json.parse(new String(Files.readAllBytes(f), java.nio.charset.StandardCharsets.UTF_8));
            String name = (String) v.get("name");
            Plan plan = Plan.of(v.get("plan"));
            anyPlan = v.get("plan");
            Map<String, Tensor> inputs = new LinkedHashMap<>();
            for (Map.Entry<String, Object> e : ((Map<String, Object>) v.get("inputs")).entrySet()) inputs.put(e.getKey(), tensor(e.getValue()));
            Map<String, float[]> knobs = new LinkedHashMap<>();
            for (Map.Entry<String, Object> e : ((Map<String, Object>) v.get("knobs")).entrySet()) {
                List<Object> l = (List<Object>) e.getValue(); // (flat, row-major: the plan's knobs give the shapes)
                float[] a = new float[l.size()];
                for (int i = 0; i < a.length; i++) a[i] = ((Double) l.get(i)).floatValue();
                knobs.put(e.getKey(), a);
            }
            List<Object> recorded = (List<Object>) v.get("calls");
            Replay replay = new Replay(recorded, name);
            Driver.Result r = Driver.run(plan, replay, inputs, knobs);
            if (!replay.calls.isEmpty()) throw new AssertionError(name + ": Java stopped before the Python driver's call " + replay.calls.peek().get("method"));
            Tensor[] got = r.tensors();
            Map<String, Object> expected = (Map<String, Object>) v.get("expected");
            check(got.length == plan.outputs.size(), name + ": " + got.length + " outputs");
            for (int i = 0; i < got.length; i++)
                check(got[i].sameAs(tensor(expected.get(plan.outputs.get(i)))), name + ": output " + plan.outputs.get(i) + " differs");
            calls += recorded.size();
            if (r.exitLayer < plan.layers) exits++;
            for (boolean b : r.skipped) if (b) { skips++; break; }
            if (r.ks != null) for (long[] row : r.ks) for (long k : row) if (k >= 0) (plan.experts > 0 ? masksSeen : kSeen).add(k);
            if (plan.experts > 0) {
                moes++;
                moePlan = v.get("plan");
            }
        }
        check(anyPlan != null, "no vectors in " + args[0]);
        check(moePlan != null, "no MoE among the vectors in " + args[0]);
        // malformed plans: one line that says what is wrong
        final Object good = anyPlan;
        malformed(good, p -> p.put("version", Plan.VERSION + 1.0), "this app reads version " + Plan.VERSION);
        malformed(good, p -> p.put("format", "onnx"), "it is not an edge plan");
        malformed(good, p -> at(p, "routed").remove("segments"), "routed has no \"segments\"");
        malformed(good, p -> at((Map<String, Object>) segments(p).get(0), "then").put("kind", "teleport"), "unknown kind \"teleport\"");
        malformed(good, p -> {
            Map<String, Object> then = at((Map<String, Object>) segments(p).get(0), "then");
            for (String k : new String[] {"next", "keep", "skip"}) if (then.containsKey(k)) then.put(k, 99.0);
        }, "jumps to segment 99");
        malformed(good, p -> ((Map<String, Object>) segments(p).get(0)).put("method", "nowhere"), "method nowhere, which the program does not have");
        malformed(good, p -> p.put("mode", "magic"), "mode is \"magic\"");
        malformed(good, p -> at(p, "model").put("layers", -1.0), "model.layers must be an integer >= 1");
        final Object moe = moePlan;
        malformed(moe, p -> moeThen(p).put("n", 63.0), "runs 63 experts, the plan's MoEs have");
        malformed(moe, p -> moeThen(p).remove("experts"), "has no \"experts\"");
        try {
            Plan.parse("{\"format\": \"edge-plan\", ");
            throw new AssertionError("truncated JSON was accepted");
        } catch (PlanException e) {
            check(e.getMessage().startsWith("malformed JSON"), e.getMessage());
        }
        try { // a program that does not belong to the plan
            Plan plan = Plan.of(good);
            Driver.run(plan, (m, in) -> new Tensor[0], inputsFor(plan), plan.levels.get(0).knobs);
            throw new AssertionError("a method with no outputs was accepted");
        } catch (PlanException e) {
            check(e.getMessage().contains("do not belong together"), e.getMessage());
        }
        System.out.println("OK vectors=" + files.size() + " calls=" + calls + " exits_taken=" + exits + " skipping=" + skips + " k_seen=" + kSeen
                + " moe_vectors=" + moes + " moe_masks=" + masksSeen.size() + " malformed=12");
    }
}
