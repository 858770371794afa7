package org.edge.plan;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Reads a .safetensors file (an 8-byte little-endian header length, a JSON header {name: {dtype,
 * shape, data_offsets}}, the data): the artifact's checks.safetensors, with the example input and
 * the eager outputs of every branch-forcing case. F32, I64 and BOOL tensors. */
public final class Safetensors {
    private Safetensors() {}

    @SuppressWarnings("unchecked")
    public static Map<String, Tensor> read(Path path) throws IOException {
        byte[] bytes = Files.readAllBytes(path);
        ByteBuffer buf = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        if (bytes.length < 8) throw new PlanException(path + " is truncated; export the artifact again");
        long n = buf.getLong(0);
        if (n < 2 || n > bytes.length - 8) throw new PlanException(path + " is truncated; export the artifact again");
        Object header = Json.parse(new String(bytes, 8, (int) n, java.nio.charset.StandardCharsets.UTF_8));
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Map.Entry<String, Object> e : ((Map<String, Object>) header).entrySet()) {
            if (e.getKey().equals("__metadata__")) continue;
            Map<String, Object> spec = (Map<String, Object>) e.getValue();
            List<Object> shape = (List<Object>) spec.get("shape"), offsets = (List<Object>) spec.get("data_offsets");
            long[] dims = new long[shape.size()];
            long count = 1;
            for (int i = 0; i < dims.length; i++) count *= dims[i] = ((Double) shape.get(i)).longValue();
            int begin = (int) (8 + n + ((Double) offsets.get(0)).longValue()), end = (int) (8 + n + ((Double) offsets.get(1)).longValue());
            String dtype = (String) spec.get("dtype");
            int size = dtype.equals("F32") ? 4 : dtype.equals("I64") ? 8 : dtype.equals("BOOL") ? 1 : -1;
            if (size < 0) throw new PlanException(path + ": tensor " + e.getKey() + " has unsupported dtype " + dtype);
            if (end > bytes.length || end - begin != count * size) throw new PlanException(path + ": tensor " + e.getKey() + " is out of bounds; export the artifact again");
            ByteBuffer d = ByteBuffer.wrap(bytes, begin, end - begin).slice().order(ByteOrder.LITTLE_ENDIAN);
            if (size == 4) {
                float[] f = new float[(int) count];
                d.asFloatBuffer().get(f);
                out.put(e.getKey(), Tensor.of(f, dims));
            } else if (size == 8) {
                long[] l = new long[(int) count];
                d.asLongBuffer().get(l);
                out.put(e.getKey(), Tensor.of(l, dims));
            } else {
                boolean[] b = new boolean[(int) count];
                for (int i = 0; i < b.length; i++) b[i] = d.get(i) != 0;
                out.put(e.getKey(), Tensor.of(b, dims));
            }
        }
        return out;
    }
}
